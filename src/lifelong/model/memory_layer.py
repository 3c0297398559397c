"""A memory layer: a unit of learning beside LoRA, made for continual learning (issue 21).

Product-key memory (Lample et al., 2019; Berges et al., 2024, "Memory layers at scale"): a query
from the hidden state is split in two halves, each scored against `n_keys` half-keys; the top-k of
each half combine into k x k candidate slots of the `n_keys ** 2`, of which the best `topk` are
read, their values (vectors of the model's width) summed with softmax weights. It sits beside the
feed-forward block of a few decoder layers (`insert_memory`), adding its read-out to the block's
output. The values start at zero, so an inserted model computes exactly what the pretrained one
did, and only the values learn: a slot's value moves only when a batch reads it.

Healing (`heal_memory`): the half-keys are set to queries the model itself makes on background
text (its own replies to diverse questions), so the slots cover the hidden states the model
visits, and for each slot the number of background texts that read it is kept (its document
frequency). The values stay zero, so healing moves no output.

Sparse memory finetuning (Lin et al., 2025): every forward that builds a gradient counts the slots
it reads (`MemoryLayer.batch_reads`; with `reads_by_gradient`, each read weighed by the loss's
gradient at its token, counted in the backward); at the optimizer step, `only_chosen_slots` keeps the
`train_slots` that the batch reads most and background text reads least (TF-IDF with Lin et al.'s
document frequency: a slot every background text reads scores zero, `tfidf_slots`) and
no other slot's value changes, Adam's momentum from earlier steps included.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError


class MemoryOptimizer(enum.StrEnum):
    """How the values learn. Adam divides each value's step by its own gradient's size, so every
    slot a step chose moves by about the rate, the ones a lesson barely reads as far as the ones
    that hold its answer; SGD moves each in proportion to its gradient. Taught 20 + 20 made-up
    facts to the same accuracy (three seeds), SGD lost 4 points of 40 general questions where Adam
    lost 22, but 70% of the earlier batch where Adam lost 27% (dev/LOG.md, stop 29)."""

    ADAMW = "adamw"
    SGD = "sgd"


# The values' rate over the learner's when `lr_scale` is not set. A read weighs ~1 / (heads * topk),
# so a value's gradient is tiny (~1e-3 in norm over all of them): SGD needs a rate ~1e6 to write a
# fact in a few steps, Adam ~1 (dev/LOG.md, stops 23 and 29). Both for the learners' 2e-4.
DEFAULT_LR_SCALE = {MemoryOptimizer.ADAMW: 5000.0, MemoryOptimizer.SGD: 1.25e10}


@dataclass(frozen=True)
class MemorySettings:
    """Sized for the 135M default on 2 cores: 256 x 256 = 65,536 slots a layer, 4 heads of top-32."""

    n_keys: int = 256  # half-keys per head; slots = n_keys ** 2
    heads: int = 4
    topk: int = 32  # slots read per head and token
    key_dim: int = 128  # query width per head (two halves of key_dim / 2)
    layers: tuple[int, ...] = (-3,)  # decoder layers that get a memory beside their feed-forward block
    # Slots a step may change, per layer (TF-IDF's top t). On the demo's first task 4096 learnt
    # more than 1024 or 16384 (one seed each, dev/LOG.md, stop 23).
    train_slots: int = 4096
    optimizer: MemoryOptimizer = MemoryOptimizer.ADAMW
    # Weigh each read of a batch by the size of the loss's gradient at its token, so slots count
    # where the loss reads them, not where a shared preamble does. Counted plainly, 20 made-up facts
    # behind the same two example turns chose 94% of the same 4096 slots in two batches, slots that
    # carry 43% of general questions' reads; weighed, 31% and 8% (dev/LOG.md, stop 29).
    reads_by_gradient: bool = False
    # The values' learning rate over the learner's (whose defaults, 2e-4, suit LoRA): a value starts
    # at zero and a token reads it with weight ~1 / (heads * topk), so it needs a far larger step to
    # matter. None: the optimizer's `DEFAULT_LR_SCALE`; Adam's 5000 gives the values a rate of 1.0
    # (dev/LOG.md, stop 23: 0.02 learnt nothing on the demo's first task, 1.0 learnt most, 5.0
    # drifted past the guard's budget).
    lr_scale: float | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "optimizer", MemoryOptimizer(self.optimizer))
        except ValueError:
            raise ConfigError(
                f"memory.optimizer {self.optimizer!r} is unknown", f"use one of {', '.join(MemoryOptimizer)}"
            ) from None
        if self.n_keys < 2 or self.heads < 1 or self.key_dim % 2 or not 1 <= self.topk <= self.n_keys:
            raise ConfigError(
                "memory: n_keys >= 2, heads >= 1, an even key_dim and 1 <= topk <= n_keys",
                "the defaults are 256, 4, 128 and 32",
            )
        if not self.layers:
            raise ConfigError("memory.layers is empty", "name at least one decoder layer, e.g. (-3,)")
        if self.train_slots < 1 or (self.lr_scale is not None and self.lr_scale <= 0):
            raise ConfigError("memory: train_slots >= 1 and lr_scale > 0", "the defaults are 4096 and the optimizer's")

    @property
    def values_lr_scale(self) -> float:
        """The values' rate over the learner's: `lr_scale`, or the optimizer's default."""
        return DEFAULT_LR_SCALE[self.optimizer] if self.lr_scale is None else self.lr_scale

    @property
    def slots(self) -> int:
        return self.n_keys**2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemorySettings:
        """From a config.json's object (JSON has lists where the settings keep tuples)."""
        return cls(**{**d, **({"layers": tuple(d["layers"])} if "layers" in d else {})})


class MemoryLayer(nn.Module):
    """Product-key lookup from `width`-wide hidden states into `slots` value vectors of that width."""

    keeps_dtype = True  # a faster copy of the model leaves it in fp32 (model/sampler_copy.py)

    background: torch.Tensor  # background texts that read each slot (saved: slot selection's denominator)
    background_texts: torch.Tensor  # how many background texts were read (a scalar)
    counts: torch.Tensor  # reads per slot while `counting`
    batch_reads: torch.Tensor  # reads per slot by forwards that build a gradient, since the last step

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
        self.register_buffer("background", torch.zeros(s.slots, dtype=torch.float64))
        self.register_buffer("background_texts", torch.zeros((), dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(s.slots, dtype=torch.float64), persistent=False)
        self.register_buffer("batch_reads", torch.zeros(s.slots, dtype=torch.float64), persistent=False)
        self.counting = False
        self.enabled = True

    def queries(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., heads, key_dim): the normalised query of each token, per head."""
        s = self.settings
        return self.query_norm(self.query(hidden).unflatten(-1, (s.heads, s.key_dim)))

    def lookup(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot indices and weights for each token: (..., heads * topk) each."""
        s = self.settings
        q1, q2 = self.queries(hidden).chunk(2, dim=-1)  # (..., H, D/2) each
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
        # In its own dtype, whatever the model's or autocast's: in bf16 the top-k would pick other slots.
        with torch.autocast(hidden.device.type, enabled=False):
            return self._read(hidden.to(self.values.weight.dtype)).to(hidden.dtype)

    def _read(self, hidden: torch.Tensor) -> torch.Tensor:
        slots, weights = self.lookup(hidden)
        # Reads are counted while healing and by forwards that learn, never while sampling.
        learning = torch.is_grad_enabled() and self.values.weight.requires_grad
        tallies = [self.counts] if self.counting else []
        if learning and not self.settings.reads_by_gradient:
            tallies.append(self.batch_reads)
        for tally in tallies:
            tally.index_add_(0, slots.flatten(), torch.ones(slots.numel(), dtype=tally.dtype))
        flat = slots.reshape(-1, slots.shape[-1])
        out = F.embedding_bag(flat, self.values.weight, per_sample_weights=weights.reshape(flat.shape), mode="sum")
        if learning and self.settings.reads_by_gradient:
            out.register_hook(self._reads_by_gradient(flat))
        return out.reshape(hidden.shape)

    def _reads_by_gradient(self, flat_slots: torch.Tensor) -> Callable[[torch.Tensor], None]:
        """A backward hook on the read-out that counts each token's reads weighed by the norm of
        the loss's gradient there (a token the loss does not reach counts nothing)."""

        def count(grad: torch.Tensor) -> None:
            size = grad.detach().double().norm(dim=-1, keepdim=True).expand(flat_slots.shape)
            self.batch_reads.index_add_(0, flat_slots.flatten(), size.flatten())

        return count


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
        memory = MemoryLayer(width, settings, generator).to(device=param.device)
        for p in memory.parameters():  # the model's dtype; the read counts stay float64
            p.data = p.data.to(param.dtype)
            p.requires_grad_(False)
        memory.values.weight.requires_grad_(True)
        layer.mlp = WithMemory(block, memory)
        memories.append(memory)
    return memories


def memories_of(model: nn.Module) -> list[MemoryLayer]:
    return [m for m in model.modules() if isinstance(m, MemoryLayer)]


@contextmanager
def memories_off(memories: Sequence[MemoryLayer]) -> Iterator[None]:
    """In the block the memories read nothing: the model is the pretrained one."""
    for m in memories:
        m.enabled = False
    try:
        yield
    finally:
        for m in memories:
            m.enabled = True


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


def tfidf_slots(batch: torch.Tensor, background: torch.Tensor, texts: float, top: int) -> torch.Tensor:
    """The `top` slots the batch reads most against the background: tf = the batch's share of
    reads of a slot, idf = log((texts + 1) / (background texts that read it + 1)). Among slots the
    batch read; a slot every background text reads scores 0 and comes last."""
    tf = batch / batch.sum().clamp(min=1)
    idf = torch.log((texts + 1) / (background + 1))
    score = torch.where(batch > 0, tf * idf, torch.full_like(tf, -math.inf))
    k = min(top, int((batch > 0).sum()))
    return score.topk(k).indices if k > 0 else torch.zeros(0, dtype=torch.long)


@contextmanager
def only_chosen_slots(memories: Sequence[MemoryLayer]) -> Iterator[None]:
    """Wrap an optimizer step so that each memory changes only the `train_slots` its batch chose.

    The candidates are the slots the batch read that have a gradient. On entry every other slot's
    value gradient is zeroed (so clipping sees the sparse gradient);
    on exit every other slot's value is put back, since Adam's momentum moves slots that earlier
    steps trained. The batch's reads are reset for the next step."""
    kept: list[tuple[MemoryLayer, torch.Tensor, torch.Tensor]] = []
    for m in memories:
        grad = m.values.weight.grad
        # Only slots the loss reaches can learn: a read whose output no loss depends on (a prompt
        # token past the last layer that matters) has no gradient, so it is not a candidate.
        reads = m.batch_reads if grad is None else torch.where(grad.abs().sum(-1) > 0, m.batch_reads, 0.0)
        chosen = tfidf_slots(reads, m.background, float(m.background_texts), m.settings.train_slots)
        frozen = torch.ones(m.settings.slots, dtype=torch.bool)
        frozen[chosen] = False
        if grad is not None:
            grad[frozen] = 0.0
        kept.append((m, frozen, m.values.weight.detach()[frozen].clone()))
        m.batch_reads.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for m, frozen, values in kept:
                m.values.weight[frozen] = values


@torch.no_grad()
def heal_memory(model: nn.Module, memories: Sequence[MemoryLayer], texts: Sequence[Sequence[int]]) -> None:
    """Fit the memories to background text (token id lists, read one at a time): each head's
    half-keys become distinct queries the model makes on it (unit length), then each slot's count
    of texts that read it goes into `background`. Values are untouched, so the model's outputs are
    too."""
    seen: dict[int, list[torch.Tensor]] = {id(m): [] for m in memories}

    def keep_queries(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen[id(module)].append(module.queries(args[0]).flatten(0, -3))  # type: ignore[operator]

    hooks = [m.register_forward_pre_hook(keep_queries) for m in memories]
    try:
        for ids in texts:
            model(input_ids=torch.tensor([list(ids)]))
    finally:
        for h in hooks:
            h.remove()
    generator = torch.Generator().manual_seed(0)
    for m in memories:
        queries = torch.cat(seen[id(m)])  # (tokens, heads, key_dim)
        for half, part in enumerate(queries.chunk(2, dim=-1)):  # (tokens, heads, key_dim / 2)
            for head in range(m.settings.heads):
                rows = part[:, head].unique(dim=0)
                pick = torch.randperm(len(rows), generator=generator)[: m.settings.n_keys]
                # With too little text for n_keys distinct queries, the rest keep their random keys.
                m.keys[half, head, : len(pick)] = F.normalize(rows[pick], dim=-1)
    for m in memories:
        m.background.zero_()
        m.background_texts.fill_(len(texts))
    for ids in texts:
        with counting(memories) as counts:
            model(input_ids=torch.tensor([list(ids)]))
        for m, c in zip(memories, counts, strict=True):
            m.background += (c > 0).double()


__all__ = [
    "DEFAULT_LR_SCALE",
    "MemoryLayer",
    "MemoryOptimizer",
    "MemorySettings",
    "WithMemory",
    "counting",
    "decoder_layers",
    "heal_memory",
    "insert_memory",
    "memories_of",
    "memories_off",
    "only_chosen_slots",
    "tfidf_slots",
]
