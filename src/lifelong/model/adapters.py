"""The policy's adapters as values: which parameters learn, and copies of them in memory.

The unit of learning is the LoRA adapters (model/policy.py); the base model never changes. Rooms
above `model/` (the learners, the guard, the learning core) measure, keep and put back adapter
weights through the helpers here, so none of them needs to know how the adapters are stored:

* `trainable(policy)`: the adapter parameters, in a fixed order;
* `nonfinite_count(policy)`: NaN/Inf values among them (a poisoned update);
* `AdapterSnapshot`: a copy of them, to measure an update's size, undo it, or score with an
  earlier version;
* `Adapter` (a state dict of LoRA tensors), `adapter_state`, `load_adapter`: adapters as values a
  server swaps per tenant.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from lifelong.model.policy import Policy

Adapter = dict[str, torch.Tensor]  # peft state-dict keys -> LoRA tensors


def trainable(policy: Policy) -> list[torch.nn.Parameter]:
    """The parameters that learn (the adapters), in the model's parameter order."""
    return [p for p in policy.model.parameters() if p.requires_grad]


def nonfinite_count(policy: Policy) -> int:
    """Number of NaN/Inf values in the adapter weights."""
    return int(sum((~torch.isfinite(p.detach())).sum() for p in trainable(policy)))


class AdapterSnapshot:
    """A copy of the adapter weights: to measure an update's size, to undo it, or to score with an
    earlier version."""

    def __init__(self, policy: Policy) -> None:
        self._params = [p.detach().clone() for p in trainable(policy)]

    def restore(self, policy: Policy) -> None:
        """Put the snapshot's adapter weights back in place of the live ones."""
        for p, saved in zip(trainable(policy), self._params, strict=True):
            p.data.copy_(saved)

    @contextmanager
    def loaded(self, policy: Policy) -> Iterator[None]:
        """Run the block with the snapshot's adapter weights, then put the live ones back."""
        live = AdapterSnapshot(policy)
        self.restore(policy)
        try:
            yield
        finally:
            live.restore(policy)

    def distance(self, policy: Policy) -> float:
        """L2 norm of the change since the snapshot (inf if anything is non-finite)."""
        total = 0.0
        for before, p in zip(self._params, trainable(policy), strict=True):
            total += float(((p.detach() - before) ** 2).sum())
        return math.sqrt(total) if math.isfinite(total) else math.inf


def adapter_state(policy: Policy) -> Adapter:
    """A copy of the live LoRA tensors (the state dict shares storage with the parameters)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy.model).items()}


def load_adapter(policy: Policy, adapter: Adapter) -> None:
    """Copy adapter tensors into the policy's LoRA parameters."""
    set_peft_model_state_dict(policy.model, dict(adapter))


__all__ = [
    "Adapter",
    "AdapterSnapshot",
    "adapter_state",
    "load_adapter",
    "nonfinite_count",
    "trainable",
]
