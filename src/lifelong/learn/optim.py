"""The optimizer every learner shares: build it for the policy's unit, set the rate, clip,
refuse non-finite gradients, and keep a memory unit's step sparse."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lifelong.model.adapters import optimizer_groups
from lifelong.model.memory_layer import MemoryLayer, MemoryOptimizer, only_chosen_slots
from lifelong.model.policy import Policy

_STEPS = "steps_taken"


def make_optimizer(policy: Policy, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the policy's learning unit (LoRA, memory values or every weight); plain SGD over
    memory values when their settings ask for it (`MemoryOptimizer`)."""
    groups = optimizer_groups(policy, weight_decay)
    if policy.memories and policy.memories[0].settings.optimizer is MemoryOptimizer.SGD:
        return torch.optim.SGD(groups, lr=learning_rate)
    return torch.optim.AdamW(groups, lr=learning_rate)


def steps_taken(optimizer: torch.optim.Optimizer) -> int:
    """Steps the optimizer's state has seen (0 for a fresh or freshly restored step-0 state): Adam's
    own count, or the one `clipped_step` keeps in the groups for SGD, which counts nothing itself."""
    counts = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    counts += [float(g.get(_STEPS, 0)) for g in optimizer.param_groups]
    return int(max(counts, default=0.0))


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float, warmup_steps: int = 0) -> float:
    """Set the rate for the next step (learners scale their base rate as the guard backs off) and
    return it. With `warmup_steps`, the rate rises linearly over the optimizer's first steps: Adam's
    first step divides each gradient by its own magnitude, so every weight moves by the full rate
    whatever its gradient, and on LoRA that flips near-tie answers nothing taught touched
    (dev/LOG.md, stop 20). The count is the optimizer's own, so a rollback to a fresh state warms up
    again."""
    if warmup_steps > 0:
        rate *= min(1.0, (steps_taken(optimizer) + 1) / warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)
    return rate


def clipped_step(
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    refuse_nonfinite: bool = True,
    memories: Sequence[MemoryLayer] = (),
) -> float:
    """Clip the accumulated gradients to `max_grad_norm` and step; returns the norm before clipping.
    With `memories` (the memory unit), only the slots each batch chose change (sparse memory
    finetuning).

    A non-finite norm (NaN/Inf somewhere in the gradients) skips the step and clears the gradients
    when `refuse_nonfinite` is set, so one poisoned batch never reaches the weights; the caller
    reports the update as refused. Without it the step is taken anyway (the unguarded baselines).
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with only_chosen_slots(memories):
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        if refuse_nonfinite and not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return norm
        optimizer.step()
    for group in optimizer.param_groups:  # saved and restored with the groups
        group[_STEPS] = group.get(_STEPS, 0) + 1
    return norm
