"""Adapter helpers (model/adapters.py): snapshots that undo, lend and measure an update."""

from __future__ import annotations

import torch

from lifelong.model.adapters import AdapterSnapshot, nonfinite_count, trainable
from lifelong.model.policy import Policy


def _weights(policy: Policy) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainable(policy)]


def test_only_the_adapters_are_trainable(tiny_policy: Policy) -> None:
    names = [n for n, p in tiny_policy.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(trainable(tiny_policy)) == len(names)


def test_a_snapshot_undoes_an_update_and_lends_its_weights_for_a_block(tiny_policy: Policy) -> None:
    snapshot = AdapterSnapshot(tiny_policy)
    before = _weights(tiny_policy)
    with torch.no_grad():
        for p in trainable(tiny_policy):
            p.add_(0.5)
    after = _weights(tiny_policy)
    assert snapshot.distance(tiny_policy) > 0

    with snapshot.loaded(tiny_policy):  # the earlier weights inside, the live ones back afterwards
        assert all(torch.equal(p, b) for p, b in zip(trainable(tiny_policy), before, strict=True))
    assert all(torch.equal(p, a) for p, a in zip(trainable(tiny_policy), after, strict=True))

    snapshot.restore(tiny_policy)
    assert snapshot.distance(tiny_policy) == 0.0


def test_nan_in_the_adapters_is_counted_and_makes_the_distance_infinite(tiny_policy: Policy) -> None:
    snapshot = AdapterSnapshot(tiny_policy)
    assert nonfinite_count(tiny_policy) == 0
    with torch.no_grad():
        trainable(tiny_policy)[0].view(-1)[:3] = float("nan")
    assert nonfinite_count(tiny_policy) == 3
    assert snapshot.distance(tiny_policy) == float("inf")
