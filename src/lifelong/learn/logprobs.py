"""Per-token log-probs of completions under the current weights, for the learner.

Samples that share a prompt (a GRPO group) run the prompt through the model once; its KV cache is
copied to every completion of the group and the completions run on top of it. Autograd flows
through the shared cache, so this is exact, and it costs the prompt once per group instead of once
per sample. Likewise the prefix every distinct prompt shares (the chat template's system turn) runs
once for all of them. Completions run in groups of similar length, each on its rows of the
prompts' cache, so a few long replies do not pad every short one (`length_buckets`), and the
whole-vocabulary work (log-softmax, KL) runs on each completion's own positions only
(`own_log_softmax`). The arithmetic mirrors the sampler's (left padding, same positions), so
sampler and learner agree to float precision on the same weights.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from lifelong.model.policy import Policy
from lifelong.model.sampler import left_pad, positions
from lifelong.timing import part
from lifelong.types import Sample

# The prefix runs once only when that saves at least this many prompt tokens: the extra forward
# call costs about as much (bf16, 2 threads: 16 anchor prompts 1.80 -> 1.19 s a step, 8 prompts
# 1.16 -> 1.01 s, 4 prompts 0.79 -> 0.86 s, 2 prompts 0.61 -> 0.75 s; dev/LOG.md, stop 24).
MIN_SAVED_TOKENS = 128
# What one more forward call over completions costs, in padded tokens it would save (see
# `length_buckets`; measured in dev/LOG.md, stop 28).
BUCKET_CALL_TOKENS = 16


def completion_log_softmax(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    pad_id: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_softmax over the vocabulary (B, C, V), completion ids (B, C), loss mask (B, C)).

    Row i, position t is the distribution that predicted completion token t of sample i; past the
    sample's completion a uniform one (padding, outside the loss mask). Gradients flow when called
    with grad enabled.
    """
    logits, comp, loss_mask = _completion_logits(model, samples, pad_id)
    where = own_positions(samples)
    padded = logits.new_zeros(*comp.shape, logits.shape[-1]).index_put(where, logits)
    return torch.log_softmax(_scaled(padded, temperature), dim=-1), comp, loss_mask


def own_log_softmax(
    model: torch.nn.Module, samples: Sequence[Sample], pad_id: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_softmax over the vocabulary (N, V), loss mask (N,)) at every completion token, sample
    after sample (N = the samples' completion tokens in all): only each completion's own
    positions, never the padding a (B, C, V) tensor carries. On a GRPO batch of short answers with
    a few long ones that padding was half the rows, and the whole-vocabulary passes over it a
    tenth of an update (dev/LOG.md, stop 30). Gradients flow when called with grad enabled."""
    logits, _, _ = _completion_logits(model, samples, pad_id)
    return torch.log_softmax(_scaled(logits, temperature), dim=-1), _flat([s.loss_mask for s in samples])


def completion_logprobs(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    pad_id: int,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, entropy, mask), each (B, C): per completion token, C = longest completion.

    Gradients flow when called with grad enabled. `mask` is the samples' loss mask (0 on padding
    and on tokens the runtime forced). The entropy is all zeros unless `with_entropy`. Computed on
    the completions' own positions only (`own_log_softmax`): each token's logit minus the
    log-sum-exp of its row."""
    logits, comp, loss_mask = _completion_logits(model, samples, pad_id)
    where = own_positions(samples)
    scores = _scaled(logits, temperature)  # (N, V)
    norm = scores.logsumexp(-1)  # (N,)
    chosen = scores.gather(-1, comp[where].unsqueeze(-1)).squeeze(-1)
    logp = torch.zeros(comp.shape).index_put(where, chosen - norm)
    entropy = torch.zeros(comp.shape)
    if with_entropy:
        with torch.no_grad():  # entropy is a health metric, not a loss term
            probs = (scores - norm.unsqueeze(-1)).exp()
            entropy[where] = norm - (probs * scores).sum(-1)
    return logp, entropy, loss_mask


def own_positions(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample, position) index of every completion token, sample after sample: where the rows
    of an (N, ...) tensor go in a (B, C, ...) one."""
    lengths = torch.tensor([len(s.completion_ids) for s in samples])
    return (
        torch.repeat_interleave(torch.arange(len(samples)), lengths),
        torch.cat([torch.arange(int(n)) for n in lengths]),
    )


def own_rows(samples: Sequence[Sample], which: Sequence[int]) -> torch.Tensor:
    """The rows of an (N, ...) tensor (`own_log_softmax`) that hold samples `which`, in that order."""
    starts = [0, *itertools.accumulate(len(s.completion_ids) for s in samples)]
    return torch.tensor([row for i in which for row in range(starts[i], starts[i + 1])], dtype=torch.long)


def _flat(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    return torch.tensor([x for row in rows for x in row], dtype=torch.float32)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def _completion_logits(
    model: torch.nn.Module, samples: Sequence[Sample], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the logits that predicted each completion token (N, V), sample after sample as
    `own_positions` orders them; completion ids (B, C); loss mask (B, C)). The completions run in
    groups of similar lengths (`length_buckets`), each on its rows of the prompts' cache."""
    if not samples:
        raise ValueError("no samples to score")
    unique: dict[tuple[int, ...], int] = {}
    prompt_of = torch.tensor([unique.setdefault(s.prompt_ids, len(unique)) for s in samples], dtype=torch.long)
    cache = DynamicCache()
    out, prompt_mask = _prompts_forward(model, list(unique), pad_id, cache)

    lengths = [len(s.completion_ids) for s in samples]
    width = max(lengths)
    comp = torch.full((len(samples), width), pad_id, dtype=torch.long)
    comp_mask = torch.zeros((len(samples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(samples), width), dtype=torch.float32)
    for i, s in enumerate(samples):
        n = len(s.completion_ids)
        comp[i, :n] = torch.tensor(s.completion_ids, dtype=torch.long)
        comp_mask[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
    pieces: list[torch.Tensor] = []
    order: list[torch.Tensor] = []  # each piece's rows of the (N, V) result
    buckets = length_buckets(lengths)
    for bucket in buckets:
        rows = sorted(bucket)  # in the samples' order: one bucket of distinct prompts needs no cache copy
        index = torch.tensor(rows, dtype=torch.long)
        prompts = prompt_of[index]
        logits = out.logits[prompts, -1:, :]  # (b, 1, V) predicts each completion's first token
        fed = max(lengths[r] for r in rows) - 1  # the last completion token predicts nothing we score
        if fed > 0:
            alone = len(buckets) == 1 and torch.equal(prompts, torch.arange(len(unique)))
            rows_cache = cache if alone else _cache_rows(cache, prompts)  # the forward extends it
            mask = prompt_mask[prompts]
            start = mask.sum(-1, keepdim=True)  # (b, 1) next position after each prompt
            fed_out = model(
                input_ids=comp[index, :fed],
                attention_mask=torch.cat([mask, comp_mask[index, :fed]], dim=-1),
                position_ids=start + torch.arange(fed).unsqueeze(0),
                past_key_values=rows_cache,
                use_cache=True,
            )
            logits = torch.cat([logits, fed_out.logits], dim=1)
        own = comp_mask[index, : logits.shape[1]].bool()  # (b, L): each row's own positions
        pieces.append(logits[own])
        order.append(own_rows(samples, rows))
    flat = torch.cat(pieces)
    return (flat if len(buckets) == 1 else flat[torch.cat(order).argsort()]), comp, loss_mask


def _cache_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A cache of `rows` of `cache`, by index, so autograd reaches the rows' prompts through it."""
    layers: list[Any] = list(cache.layers)  # full-attention layers: keys and values (rows, heads, T, d)
    return DynamicCache([(layer.keys[rows], layer.values[rows]) for layer in layers])


def length_buckets(lengths: Sequence[int]) -> list[list[int]]:
    """Rows (indices into `lengths`) split into groups run as one forward each, so that a few long
    completions do not pad every short one to their length: the split minimises the padded tokens
    fed plus `BUCKET_CALL_TOKENS` per forward (shortest first; a group of one-token completions
    needs no forward and costs nothing)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    fed = [max(lengths[i] - 1, 0) for i in order]

    def cost(first: int, last: int) -> int:  # rows order[first..last] as one forward
        return 0 if fed[last] == 0 else (last - first + 1) * fed[last] + BUCKET_CALL_TOKENS

    best = [0] * (len(order) + 1)  # best[j]: the cheapest split of the first j rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        best[j], cut[j] = min((best[i] + cost(i, j - 1), i) for i in range(j))
    groups: list[list[int]] = []
    j = len(order)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _prompts_forward(
    model: torch.nn.Module, prompts: list[tuple[int, ...]], pad_id: int, cache: DynamicCache
) -> tuple[Any, torch.Tensor]:
    """Run distinct prompts into `cache`, one row each. Returns the model's output (the last
    position's logits only) and the cache's (rows, length) attention mask.

    The prefix all prompts share (a chat template's system turn: 23 of the ~38 tokens of a task
    prompt) runs once, where that saves enough, and its cache is copied to every row, as a group's
    prompt is; each prompt's own remainder runs on top of it, left-padded after the prefix.
    Autograd flows through the copy, so this is the same computation as running each prompt whole
    (tests/learn pin the gradient)."""
    shared = 0
    if len(prompts) > 1:
        shortest = min(len(p) for p in prompts)
        while shared < shortest - 1 and all(p[shared] == prompts[0][shared] for p in prompts):
            shared += 1
    if (len(prompts) - 1) * shared < MIN_SAVED_TOKENS:
        shared = 0  # each prompt runs whole
    else:
        model(
            input_ids=torch.tensor([prompts[0][:shared]], dtype=torch.long),
            position_ids=torch.arange(shared).unsqueeze(0),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(len(prompts))
    ids, own = left_pad([p[shared:] for p in prompts], pad_id)
    mask = torch.cat([torch.ones(len(prompts), shared, dtype=own.dtype), own], dim=-1)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions(mask)[:, shared:],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out, mask


def micro_batches(samples: Sequence[Sample], size: int, max_tokens: int = 0) -> list[slice]:
    """Contiguous runs of about `size` samples that keep samples sharing a prompt together when they
    fit (a shared prompt runs once, above), so a learner's step holds one run's activations at a
    time. With `max_tokens` a run also ends before its prompt and completion tokens would pass it
    (verl's dynamic batch size): memory goes with tokens, and a batch of short answers then runs in
    fewer, fuller forwards, which a CPU's matrix products need (dev/LOG.md, stop 30)."""
    runs: list[slice] = []
    start = held = 0
    for i, sample in enumerate(samples):
        rows, tokens = i - start, len(sample.prompt_ids) + len(sample.completion_ids)
        new_prompt = rows > 0 and sample.prompt_ids != samples[i - 1].prompt_ids
        full = (rows >= size and new_prompt) or rows >= 2 * size  # a huge group splits anyway
        if rows and (full or (max_tokens and held + tokens > max_tokens)):
            runs.append(slice(start, i))
            start, held = i, 0
        held += tokens
    if samples:
        runs.append(slice(start, len(samples)))
    return runs


def reverse_kl(
    student_logp: torch.Tensor, other_logp: torch.Tensor, mask: torch.Tensor, tokens: float | None = None
) -> torch.Tensor:
    """KL(student || other) over the whole vocabulary, averaged over the masked tokens.

    Both log-prob tensors are (B, C, V) from `completion_log_softmax` with `mask` (B, C), or (N, V)
    from `own_log_softmax` with `mask` (N,). A learner
    accumulating micro-batches passes the whole step's `tokens` so the parts sum to the mean."""
    per_token = (student_logp.exp() * (student_logp - other_logp)).sum(-1)
    return (per_token * mask).sum() / (mask.sum().clamp(min=1) if tokens is None else max(tokens, 1.0))


class PretrainedLogSoftmax:
    """The pretrained model's log-softmax on samples (the adapters off), each sample's computed
    once: only the adapters learn, so an anchor item's reference is the same at every step, and
    recomputing it cost a third of the anchor term, the largest part of a `lifelong` step
    (dev/LOG.md, stop 21). Bounded: the least recently used rows go first."""

    def __init__(self, max_rows: int = 1024) -> None:  # rows of the vocabulary: 1024 x 49k floats ~ 200 MB
        self.max_rows = max_rows
        self._kept: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        self._rows = 0

    def __call__(self, policy: Policy, samples: Sequence[Sample], temperature: float = 1.0) -> torch.Tensor:
        """(N, V) as `own_log_softmax` gives it for the pretrained model: each completion token's
        row, sample after sample."""
        keys = [(s.prompt_ids, s.completion_ids, temperature) for s in samples]
        distinct = dict(zip(keys, samples, strict=True))
        found = {key: self._kept[key] for key in distinct if key in self._kept}
        todo = [key for key in distinct if key not in found]
        if todo:
            with torch.no_grad(), policy.pretrained():
                logp, _ = own_log_softmax(policy.model, [distinct[key] for key in todo], policy.pad_id, temperature)
            for key, rows in zip(todo, logp.split([len(distinct[key].completion_ids) for key in todo]), strict=True):
                found[key] = rows.clone()
        for key, rows in found.items():
            self._keep(key, rows)
        return torch.cat([found[key] for key in keys])

    def _keep(self, key: tuple[Any, ...], rows: torch.Tensor) -> None:
        if key in self._kept:
            self._kept.move_to_end(key)
            return
        self._kept[key] = rows
        self._rows += rows.shape[0]
        while self._rows > self.max_rows and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._rows -= dropped.shape[0]


def hold_to_pretrained(
    policy: Policy,
    samples: Sequence[Sample],
    coef: float,
    temperature: float = 1.0,
    pretrained: PretrainedLogSoftmax | None = None,
) -> float:
    """Backward `coef` x KL(policy || pretrained) on general-ability `samples` (every learner's
    anchor term, accumulated into the step's gradients); returns the KL. `pretrained` keeps the
    reference side between steps."""
    with part("anchor"):
        kl = pretrained_kl(policy, samples, temperature, pretrained)
        (coef * kl).backward()
        return float(kl.detach())


def pretrained_kl(
    policy: Policy,
    samples: Sequence[Sample],
    temperature: float = 1.0,
    pretrained: PretrainedLogSoftmax | None = None,
) -> torch.Tensor:
    """KL(policy || pretrained model) over the whole vocabulary, averaged over the samples' target
    tokens (the adapters switched off for the reference): the anchor that holds general ability."""
    logp, mask = own_log_softmax(policy.model, samples, policy.pad_id, temperature)  # (N, V), (N,)
    ref_logp = (pretrained or PretrainedLogSoftmax(0))(policy, samples, temperature)
    return reverse_kl(logp, ref_logp, mask)
