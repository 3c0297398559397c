"""The weights the sampler decodes with: the live model's, in a faster form.

Decoding is most of acting, and on a CPU with bfloat16 units a bf16 matmul runs about twice as fast
as fp32 (dev/LOG.md, stop 24). The learner keeps its fp32 weights; the sampler decodes with a copy
in `dtype` whose LoRA layers are merged into their base weights, so a linear layer is one matmul
instead of three. The copy follows the live model: before each use, every tensor it was made from
is checked by its storage and version counter (PyTorch bumps the counter on every in-place write:
optimizer steps, a tenant's adapter loaded), and only the changed ones are recomputed. A write
autograd must not see (`.data`, as `AdapterSnapshot.restore` makes) is reported through
`invalidate`.
The sampler's log-probs are the copy's; the learner's importance ratio (learn/grpo.py) is against
them, so the rounding is corrected for, and its size is the `policy/sampler_mismatch` metric.

Buffers (rotary frequencies, a memory's read counts) keep their dtype: rounding RoPE's frequencies
to bf16 would move every position. So does a module marked `keeps_dtype` (a memory layer, whose
top-k over bf16 scores would read other slots than the learner's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch import nn


def _signature(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in tensors)


@dataclass
class _Mirror:
    """One tensor of the copy, recomputed from live tensors when any of them changed."""

    target: torch.Tensor
    sources: tuple[torch.Tensor, ...]
    compute: Callable[[], torch.Tensor]
    seen: tuple[tuple[int, int], ...] = ()

    def refresh(self) -> bool:
        now = _signature(self.sources)
        if now == self.seen:
            return False
        self.target.copy_(self.compute())
        self.seen = now
        return True


class SamplerCopy:
    """A `dtype` copy of a model for decoding, LoRA merged, kept in step with the live model."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self._source: nn.Module | None = None
        self._copy: nn.Module | None = None
        self._mirrors: list[_Mirror] = []

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> nn.Module:
        """The copy of `model`, with every change made to `model` since the last call. Made inside
        `Policy.pretrained()`, it is a copy of the pretrained model: LoRA off, memories reading
        nothing, or the full unit's frozen reference."""
        if self._copy is None or self._source is not model:
            self._build(model)
        self.refreshed()
        assert self._copy is not None
        return self._copy

    @torch.no_grad()
    def refreshed(self) -> int:
        """Bring the copy up to date; the number of its tensors that had changed."""
        return sum(mirror.refresh() for mirror in self._mirrors)

    def invalidate(self, tensors: Iterable[torch.Tensor]) -> None:
        """Take these live tensors again at the next use: they were written without a version bump
        (through `.data`, which a write under a live autograd graph must use)."""
        written = {id(t) for t in tensors}
        for mirror in self._mirrors:
            if any(id(t) in written for t in mirror.sources):
                mirror.seen = ()

    def _build(self, model: nn.Module) -> None:
        twin = copy.deepcopy(model).eval().requires_grad_(False)
        kept = {id(p) for m in twin.modules() if getattr(m, "keeps_dtype", False) for p in m.parameters()}
        for p in twin.parameters():
            if p.is_floating_point() and id(p) not in kept:
                p.data = p.data.to(self.dtype)
        live_modules: dict[str, Any] = dict(model.named_modules())  # peft's LoRA layers are typed as mixins
        merged: set[str] = set()  # parameter names a merged LoRA layer covers
        mirrors: list[_Mirror] = []
        for name, twin_layer in twin.named_modules():
            # Copied with its adapters switched off (inside `disable_adapter()`), it stays so.
            if not isinstance(twin_layer, LoraLayer) or not twin_layer.active_adapters or twin_layer.disable_adapters:
                continue
            layer: Any = twin_layer
            live = live_modules[name]
            layer.merge(adapter_names=list(layer.active_adapters))  # its forward is now the base layer alone
            sources: list[torch.Tensor] = [live.get_base_layer().weight]
            for adapter in live.active_adapters:
                sources += list(live.lora_A[adapter].parameters()) + list(live.lora_B[adapter].parameters())
            mirrors.append(_Mirror(layer.get_base_layer().weight, tuple(sources), _merged_weight(live)))
            merged |= {f"{name}.{n}" for n, _ in layer.named_parameters() if n != "base_layer.bias"}
        live_tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, tensor in list(twin.named_parameters()) + list(twin.named_buffers()):
            if name in merged:
                continue
            source = live_tensors[name]
            mirrors.append(_Mirror(tensor, (source,), source.detach))
        self._source, self._copy, self._mirrors = model, twin, mirrors


def _merged_weight(layer: Any) -> Callable[[], torch.Tensor]:
    """Base weight plus the active adapters' deltas of a live LoRA layer, in its (fp32) precision."""

    def compute() -> torch.Tensor:
        weight: torch.Tensor = layer.get_base_layer().weight.detach()
        for adapter in layer.active_adapters:
            weight = weight + layer.get_delta_weight(adapter)
        return weight

    return compute
