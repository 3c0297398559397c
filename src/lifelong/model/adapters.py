"""The policy's learning unit as values: which parameters learn, and copies of them in memory.

The unit of learning (`Policy.unit`) is the LoRA adapters by default, or memory-layer values, or
every weight (model/policy.py). The word "adapter" below means whichever it is. Rooms above
`model/` (the learners, the guard, the learning core) measure, keep and put back these weights
through the helpers here, so none of them needs to know which unit learns or how it is stored:

* `trainable(policy)`: the parameters that learn, in a fixed order;
* `optimizer_groups(policy)`: them as optimizer parameter groups, each with its `lr_scale`;
* `nonfinite_count(policy)`: NaN/Inf values among them (a poisoned update);
* `AdapterSnapshot`: a copy of them, to measure an update's size, undo it, or score with an
  earlier version;
* `Adapter` (a state dict), `adapter_state`, `load_adapter`: the unit as a value a checkpoint
  keeps and a server swaps per tenant. LoRA: peft's tensors. Memory: each memory's healed keys
  and background document frequencies, and its values as a sparse delta (only the slots that
  learning wrote). Full: the model's whole state dict.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from lifelong.model.policy import Policy, Unit

Adapter = dict[str, torch.Tensor]  # state-dict keys -> tensors of the learning unit
_MEMORY_FIXED = ("keys", "query.weight", "query_norm.weight", "query_norm.bias", "background", "background_texts")


def trainable(policy: Policy) -> list[torch.nn.Parameter]:
    """The parameters that learn (the unit's), in the model's parameter order."""
    return [p for p in policy.model.parameters() if p.requires_grad]


def optimizer_groups(policy: Policy, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups; `set_learning_rate` multiplies a group's
    `lr_scale` in. Memory values take no weight decay: it would move every slot at every step."""
    if policy.unit is Unit.MEMORY:
        return [
            {"params": trainable(policy), "lr_scale": policy.memories[0].settings.values_lr_scale, "weight_decay": 0.0}
        ]
    return [{"params": trainable(policy), "lr_scale": 1.0, "weight_decay": weight_decay}]


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
        params = trainable(policy)
        for p, saved in zip(params, self._params, strict=True):
            # Through .data: `loaded()` swaps weights under a live autograd graph, which a versioned
            # write would invalidate; so the sampler's copy is told instead.
            p.data.copy_(saved)
        policy.weights_written(params)

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
    """A copy of the live unit as tensors (a state dict shares storage with the parameters)."""
    if policy.unit is Unit.LORA:
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy.model).items()}
    if policy.unit is Unit.FULL:
        return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
    state: Adapter = {}
    for i, memory in enumerate(policy.memories):
        own = memory.state_dict()
        state.update({f"memory.{i}.{name}": own[name].detach().clone() for name in _MEMORY_FIXED})
        values = memory.values.weight.detach()
        rows = torch.nonzero(values.abs().sum(-1)).flatten()
        state[f"memory.{i}.rows"] = rows
        state[f"memory.{i}.values"] = values[rows].clone()
    return state


def load_adapter(policy: Policy, adapter: Adapter) -> None:
    """Copy the unit's tensors into the policy; a KeyError or ValueError if they are another unit's
    or another shape's."""
    if policy.unit is Unit.LORA:
        set_peft_model_state_dict(policy.model, dict(adapter))
        return
    if policy.unit is Unit.FULL:
        policy.model.load_state_dict(adapter)
        return
    if len(policy.memories) != len({k.split(".")[1] for k in adapter if k.startswith("memory.")}):
        raise ValueError("the state holds another number of memory layers")
    for i, memory in enumerate(policy.memories):
        fixed = {name: adapter[f"memory.{i}.{name}"] for name in _MEMORY_FIXED}
        missing, unexpected = memory.load_state_dict({**fixed, "values.weight": memory.values.weight}, strict=False)
        if missing or unexpected:
            raise ValueError(f"memory {i}: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            memory.values.weight.zero_()
            memory.values.weight[adapter[f"memory.{i}.rows"]] = adapter[f"memory.{i}.values"]


__all__ = [
    "Adapter",
    "AdapterSnapshot",
    "adapter_state",
    "load_adapter",
    "nonfinite_count",
    "optimizer_groups",
    "trainable",
]
