"""The optimizer step every learner shares: set the rate, clip, refuse non-finite gradients."""

from __future__ import annotations

import math

import torch


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """The rate for the next step (learners scale their base rate as the guard backs off)."""
    for group in optimizer.param_groups:
        group["lr"] = rate


def clipped_step(optimizer: torch.optim.Optimizer, max_grad_norm: float, refuse_nonfinite: bool = True) -> float:
    """Clip the accumulated gradients to `max_grad_norm` and step; returns the norm before clipping.

    A non-finite norm (NaN/Inf somewhere in the gradients) skips the step and clears the gradients
    when `refuse_nonfinite` is set, so one poisoned batch never reaches the weights; the caller
    reports the update as refused. Without it the step is taken anyway (the unguarded baselines).
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if refuse_nonfinite and not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return norm
    optimizer.step()
    return norm
