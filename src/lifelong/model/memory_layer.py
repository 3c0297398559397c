"""A memory layer: a unit of learning beside LoRA, made for continual learning (issue 21).

Product-key memory (Lample et al., 2019; Berges et al., 2024, "Memory layers at scale"): a query
from the hidden state is split in two halves, each scored against `n_keys` half-keys; the top-k of
each half combine into k x k candidate slots of the `n_keys ** 2`, of which the best `topk` are
read, their values (vectors of the model's width) summed with softmax weights. It sits beside the
feed-forward block of a few decoder layers (`insert_memory`), adding its read-out to the block's
output. The values start at zero, so an inserted model computes exactly what the pretrained one
did, and only the values learn: a slot's value moves only when a batch reads it.

Sparse memory finetuning (Lin et al., 2025): each layer counts how often each slot is read
(`MemoryLayer.counts`); a batch trains only the slots it reads far more than background text does
(TF-IDF of the batch's access counts against the background counts, `tfidf_slots`), and
`SparseValueUpdate` zeroes the value gradient of every other slot. The background counts come from
a healing pass over text like the model's own (`count_background`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError


@dataclass(frozen=True)
class MemorySettings:
    """Sized for the 135M default on 2 cores: 256 x 256 = 65,536 slots a layer, 4 heads of top-32."""

    n_keys: int = 256  # half-keys per head; slots = n_keys ** 2
    heads: int = 4
    topk: int = 32  # slots read per head and token
    key_dim: int = 128  # query width per head (two halves of key_dim / 2)
    layers: tuple[int, ...] = (-3,)  # decoder layers that get a memory beside their feed-forward block

    def __post_init__(self) -> None:
        if self.n_keys < 2 or self.heads < 1 or self.key_dim % 2 or not 1 <= self.topk <= self.n_keys:
            raise ConfigError(
                "memory: n_keys >= 2, heads >= 1, an even key_dim and 1 <= topk <= n_keys",
                "the defaults are 256, 4, 128 and 32",
            )
        if not self.layers:
            raise ConfigError("memory.layers is empty", "name at least one decoder layer, e.g. (-3,)")

    @property
    def slots(self) -> int:
        return self.n_keys**2


class MemoryLayer(nn.Module):
    """Product-key lookup from `width`-wide hidden states into `slots` value vectors of that width."""

    counts: torch.Tensor  # reads per slot while `counting` (a buffer, not saved)

    def __init__(self, width: int, settings: MemorySettings, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.settings = settings
        s = settings
        self.query = nn.Linear(width, s.heads * s.key_dim, bias=False)
        self.query_norm = nn.LayerNorm(s.key_dim)
        half = s.key_dim // 2
        keys = torch.randn(2, s.heads, s.n_keys, half, generator=generator) / math.sqrt(half)
        self.keys = nn.Parameter(keys)  # (2 halves, heads, n_keys, half)
        nn.init.normal_(self.query.weight, std=1.0 / math.sqrt(width), generator=generator)
        self.values = nn.Embedding(s.slots, width)
        nn.init.zeros_(self.values.weight)  # inserted, it changes nothing
        self.register_buffer("counts", torch.zeros(s.slots, dtype=torch.float64), persistent=False)
        self.counting = False
        self.enabled = True

    def lookup(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot indices and weights for each token: (..., heads * topk) each."""
        s = self.settings
        q = self.query_norm(self.query(hidden).unflatten(-1, (s.heads, s.key_dim)))  # (..., H, D)
        q1, q2 = q.chunk(2, dim=-1)  # (..., H, D/2) each
        s1 = torch.einsum("...hd,hkd->...hk", q1, self.keys[0])  # (..., H, n_keys)
        s2 = torch.einsum("...hd,hkd->...hk", q2, self.keys[1])
        top1, i1 = s1.topk(s.topk, dim=-1)  # (..., H, k)
        top2, i2 = s2.topk(s.topk, dim=-1)
        combined = (top1.unsqueeze(-1) + top2.unsqueeze(-2)).flatten(-2)  # (..., H, k*k)
        best, where = combined.topk(s.topk, dim=-1)  # (..., H, k)
        slots = i1.gather(-1, where // s.topk) * s.n_keys + i2.gather(-1, where % s.topk)
        weights = F.softmax(best, dim=-1)
        return slots.flatten(-2), weights.flatten(-2) / s.heads  # heads' read-outs averaged

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return torch.zeros_like(hidden)
        slots, weights = self.lookup(hidden)
        if self.counting:
            self.counts.index_add_(0, slots.flatten(), torch.ones(slots.numel(), dtype=self.counts.dtype))
        flat = slots.reshape(-1, slots.shape[-1])
        out = F.embedding_bag(flat, self.values.weight, per_sample_weights=weights.reshape(flat.shape), mode="sum")
        return out.reshape(hidden.shape)


class WithMemory(nn.Module):
    """A feed-forward block with a memory beside it: block(x) + memory(x)."""

    def __init__(self, block: nn.Module, memory: MemoryLayer) -> None:
        super().__init__()
        self.block = block
        self.memory = memory

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.block(hidden) + self.memory(hidden)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: its longest ModuleList (Llama-family and most others)."""
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no ModuleList of decoder layers")
    return max(stacks, key=len)


def insert_memory(model: nn.Module, settings: MemorySettings, seed: int = 0) -> list[MemoryLayer]:
    """Put a memory beside the feed-forward block (`mlp`) of each of `settings.layers`; only the
    values learn. Returns the memories, in layer order."""
    layers = decoder_layers(model)
    config: Any = getattr(model, "config")  # noqa: B009 - a Hugging Face model's, typed as Any
    width = int(config.hidden_size)
    generator = torch.Generator().manual_seed(seed)
    memories = []
    for index in sorted({i % len(layers) for i in settings.layers}):
        layer = layers[index]
        block = getattr(layer, "mlp", None)
        if block is None:
            raise ConfigError(f"decoder layer {index} has no `mlp` block", "use a Llama-family model")
        param = next(block.parameters())
        memory = MemoryLayer(width, settings, generator).to(dtype=param.dtype, device=param.device)
        for p in memory.parameters():
            p.requires_grad_(False)
        memory.values.weight.requires_grad_(True)
        layer.mlp = WithMemory(block, memory)
        memories.append(memory)
    return memories


def memories_of(model: nn.Module) -> list[MemoryLayer]:
    return [m for m in model.modules() if isinstance(m, MemoryLayer)]


@contextmanager
def counting(memories: Sequence[MemoryLayer]) -> Iterator[list[torch.Tensor]]:
    """Count slot reads in the block; yields, per memory, the counts of the block alone (after it)."""
    before = [m.counts.clone() for m in memories]
    counts: list[torch.Tensor] = []
    for m in memories:
        m.counting = True
    try:
        yield counts
    finally:
        for m, b in zip(memories, before, strict=True):
            m.counting = False
            counts.append(m.counts - b)


def tfidf_slots(batch: torch.Tensor, background: torch.Tensor, top: int) -> torch.Tensor:
    """The `top` slots the batch reads most against the background: tf = the batch's share of
    reads of a slot, idf = log((N + 1) / (background reads + 1)) with N the background's total."""
    tf = batch / batch.sum().clamp(min=1)
    idf = torch.log((background.sum() + 1) / (background + 1))
    score = torch.where(batch > 0, tf * idf, torch.full_like(tf, -math.inf))
    k = min(top, int((batch > 0).sum()))
    return score.topk(k).indices if k > 0 else torch.zeros(0, dtype=torch.long)


class SparseValueUpdate:
    """Keeps a memory's value gradient on the chosen slots only (set per batch with `choose`)."""

    def __init__(self, memory: MemoryLayer) -> None:
        self.memory = memory
        self._mask: torch.Tensor | None = None
        self._handle = memory.values.weight.register_hook(self._masked)

    def choose(self, slots: torch.Tensor) -> None:
        mask = torch.zeros(self.memory.settings.slots, 1, dtype=self.memory.values.weight.dtype)
        mask[slots] = 1.0
        self._mask = mask

    def _masked(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self._mask is None else grad * self._mask

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def count_background(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Read background text (token id batches) through the model, counting slot reads into each
    memory's `counts`: the denominator of TF-IDF slot selection."""
    memories = memories_of(model)
    for m in memories:
        m.counting = True
    try:
        for ids in batches:
            model(input_ids=ids)
    finally:
        for m in memories:
            m.counting = False


__all__ = [
    "MemoryLayer",
    "MemorySettings",
    "SparseValueUpdate",
    "WithMemory",
    "count_background",
    "counting",
    "decoder_layers",
    "insert_memory",
    "memories_of",
    "tfidf_slots",
]
