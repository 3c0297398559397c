"""The shared optimizer step: the rate's warmup counts the optimizer's own steps."""

from __future__ import annotations

import pytest
import torch

from lifelong.learn.optim import clipped_step, set_learning_rate, steps_taken


def _adam() -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    weight = torch.nn.Parameter(torch.zeros(3))
    return weight, torch.optim.AdamW([weight], lr=1.0, weight_decay=0.0)


def _step(weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
    weight.grad = torch.tensor([1e-6, 1.0, -1e3])  # Adam's first step: the rate times each sign
    clipped_step(optimizer, max_grad_norm=1e9)


def test_warmup_rises_linearly_with_the_optimizers_steps_and_restarts_with_a_fresh_state() -> None:
    weight, optimizer = _adam()
    rates = []
    for _ in range(5):
        rates.append(set_learning_rate(optimizer, 1e-2, warmup_steps=4))
        _step(weight, optimizer)
    assert rates == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])
    assert steps_taken(optimizer) == 5
    # The first step moved every weight by the warmed-up rate, not the full one (a tiny gradient too).
    fresh, first = _adam()
    set_learning_rate(first, 1e-2, warmup_steps=4)
    _step(fresh, first)
    assert fresh.detach().abs().tolist() == pytest.approx([2.5e-3] * 3, rel=0.02)
    # A rollback loads a step-0 state: warmup again.
    first.load_state_dict(_adam()[1].state_dict())
    assert steps_taken(first) == 0 and set_learning_rate(first, 1e-2, warmup_steps=4) == pytest.approx(2.5e-3)


def test_no_warmup_sets_the_rate_as_given() -> None:
    _, optimizer = _adam()
    assert set_learning_rate(optimizer, 3e-4) == 3e-4 and optimizer.param_groups[0]["lr"] == 3e-4


def test_sgd_counts_its_steps_for_the_warmup_and_a_restore_brings_the_count_back() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    for _ in range(2):
        set_learning_rate(optimizer, 1e-2, warmup_steps=4)
        _step(weight, optimizer)
    assert steps_taken(optimizer) == 2 and set_learning_rate(optimizer, 1e-2, warmup_steps=4) == pytest.approx(7.5e-3)
    saved = optimizer.state_dict()
    fresh = torch.optim.SGD([weight], lr=1.0)
    assert steps_taken(fresh) == 0
    fresh.load_state_dict(saved)
    assert steps_taken(fresh) == 2
