"""Batched sampling with a KV cache that returns the sampler's own log-probs.

The loop is deliberately plain: left-pad the contexts, prefill each distinct context once, then one
token per step for every live row. Rows that finish are dropped from the cache so a long straggler
does not make the whole batch pay. A per-row `control` function may stop a row or force tokens into
it (the reasoning budget uses this to insert "Answer:"); forced tokens are fed through the same cache
and marked, so no second prefill is needed. An `on_token` callback sees each row grow, token by
token (streaming).

Log-probs come from the distribution the token was drawn from, so the learner's importance ratio
compares like with like: the temperature-scaled softmax of the logits after OpenAI's presence and
frequency penalties, and under top-k/top-p that distribution truncated and renormalised (a token
outside the nucleus has probability 0; a kept one its share of the nucleus). Greedy decoding
records the T=1 log-probs of the penalised logits, untruncated. Each option costs nothing when
off: the default path is the plain one above, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class Force:
    """Feed these tokens next instead of sampling; `replace_last` drops the token just sampled."""

    tokens: tuple[int, ...]
    replace_last: bool = False


STOP = "stop"
# Called after each sampled token with (row, token ids so far, including the new one).
# Returns None to go on, STOP to end the row, or a Force.
ControlFn = Callable[[int, list[int]], "Force | str | None"]
# Called with (row, token ids so far) after each token a row keeps, sampled or forced.
TokenFn = Callable[[int, list[int]], None]


@dataclass(frozen=True)
class Shaping:
    """How logits become the sampling distribution besides temperature (OpenAI's parameters).

    `top_k` 0 and `top_p` 1.0 are off. Penalties follow OpenAI's definition, on the tokens this row
    generated so far (not the prompt): logit[j] -= frequency_penalty * count[j] +
    presence_penalty * (count[j] > 0)."""

    top_k: int = 0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def truncates(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0

    @property
    def penalises(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


NO_SHAPING = Shaping()


@dataclass(frozen=True)
class Contrast:
    """Context-aware decoding (Shi et al., 2023): each row's logits are pushed away from those the same
    row gets without what was put into its context (recalled memory), as (1 + weight) * l(context) -
    weight * l(bare). A 135M model asked about a fact it was just shown tends to fall back on what it
    believed before; the contrast makes the shown fact win (dev/LOG.md, stop 31). `bare[i]` is row
    i's context without the recalled part; None leaves row i as it is, at no cost."""

    bare: tuple[tuple[int, ...] | None, ...]
    weight: float

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError("a contrast weight must be >= 0")
        if any(b is not None and not b for b in self.bare):
            raise ValueError("every bare context needs at least one token")


@dataclass
class SampledRow:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)
    ended: str = "length"  # "eos", "stop" or "length"


def left_pad(contexts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), with every context aligned to the right edge."""
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for i, ctx in enumerate(contexts):
        if ctx:
            ids[i, width - len(ctx) :] = torch.tensor(list(ctx), dtype=torch.long)
            mask[i, width - len(ctx) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding aware)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def penalise(logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's presence and frequency penalties; `counts` (B, V) is how often each row generated
    each token so far."""
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def truncate(logp: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep each row's `top_k` most likely tokens, then the smallest set of them whose probability
    reaches `top_p` (the most likely token always stays); renormalised log-probs, -inf elsewhere."""
    if top_k > 0 and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        # mass strictly before each token: a token stays while that is still short of top_p
        before = sorted_logp.exp().cumsum(-1) - sorted_logp.exp()
        drop = before >= top_p
        drop[:, 0] = False
        logp = logp.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return torch.log_softmax(logp, dim=-1)


def draw(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from the distribution exp(logp) (B, V): (B, 1) indices.

    One uniform per row against the cumulative distribution. `torch.multinomial` draws an
    exponential per vocabulary entry instead, 49k per row per token, which took a sixth of decoding
    time (dev/LOG.md, stop 24). A token of probability 0 is never drawn: the search lands past flat
    stretches of the cumulative sum."""
    cdf = logp.double().exp().cumsum(-1)  # float64: the tail of 49k small terms must not saturate
    u = torch.rand((logp.shape[0], 1), generator=generator, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=logp.shape[-1] - 1)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    contexts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    control: ControlFn | None = None,
    shaping: Shaping = NO_SHAPING,
    on_token: TokenFn | None = None,
    contrast: Contrast | None = None,
) -> list[SampledRow]:
    """Sample a continuation for each context (at most `max_new_tokens`). temperature 0 = greedy.

    Under a `contrast`, a row with a bare context has a twin row decoding that context: the twins
    follow the batch's rows after them, take the same tokens, and end with their row."""
    if not contexts:
        return []
    if any(len(c) == 0 for c in contexts):
        raise ValueError("every context needs at least one token")
    if contrast is not None and len(contrast.bare) != len(contexts):
        raise ValueError(f"{len(contrast.bare)} bare contexts for {len(contexts)} contexts")
    rows = [SampledRow() for _ in contexts]
    if max_new_tokens <= 0:
        return rows
    weight = contrast.weight if contrast is not None else 0.0
    twins = {r: b for r, b in enumerate(contrast.bare) if b is not None} if contrast is not None and weight else {}
    twinned = list(twins)  # the row of each twin, in batch order
    # Prefill each distinct context once (a GRPO group shares its prompt), then copy its cache rows.
    unique: dict[tuple[int, ...], int] = {}
    row_of = [unique.setdefault(tuple(c), len(unique)) for c in [*contexts, *twins.values()]]
    ids, mask = left_pad(list(unique), pad_id)
    pos = positions(mask)
    cache = DynamicCache()
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
    )
    expand = torch.tensor(row_of, dtype=torch.long)
    if len(unique) < len(row_of):
        cache.batch_select_indices(expand)
    mask = mask[expand]
    next_pos = pos[expand][:, -1:] + 1  # (B, 1)
    logits = out.logits[expand, -1, :]  # (B, V)
    live = list(range(len(contexts)))  # original row index of each batch row before the twins
    queues: dict[int, list[int]] = {}  # row -> forced tokens still to feed
    counts = torch.zeros((len(contexts), logits.shape[-1])) if shaping.penalises else None  # (B, V)
    for _ in range(max_new_tokens):
        scores = logits[: len(live)].float()
        if twinned:
            at = {r: b for b, r in enumerate(live)}
            index = torch.tensor([at[r] for r in twinned], dtype=torch.long)
            scores[index] = (1 + weight) * scores[index] - weight * logits[len(live) :].float()
        if counts is not None:
            scores = penalise(scores, counts, shaping.presence_penalty, shaping.frequency_penalty)
        # Greedy decoding records the model's own (T=1) log-probs, which is what scoring wants.
        logp = torch.log_softmax(scores / (temperature if temperature > 0 else 1.0), dim=-1)  # (B, V)
        if not torch.isfinite(logp).all():
            # Broken weights (NaN/Inf) must give broken text, not a crash that loses the batch.
            logp = torch.log_softmax(torch.nan_to_num(logp, nan=0.0, posinf=0.0, neginf=-1e4), dim=-1)
        if temperature <= 0:
            drawn = logp.argmax(dim=-1, keepdim=True)
        else:
            if shaping.truncates:  # sample from, and record, the truncated distribution
                logp = truncate(logp, shaping.top_k, shaping.top_p)
            drawn = draw(logp, generator)  # (B, 1)
        drawn_logp = logp.gather(-1, drawn).squeeze(-1)
        feed: list[int] = []
        keep: list[int] = []
        for b, r in enumerate(live):
            row = rows[r]
            if queues.get(r):  # feeding forced tokens; this step's logits are not used
                t = queues[r].pop(0)
                row.token_ids.append(t)
                row.logprobs.append(0.0)
                row.forced.append(True)
            else:
                t = int(drawn[b, 0])
                row.token_ids.append(t)
                row.logprobs.append(float(drawn_logp[b]))
                row.forced.append(False)
                decision = control(r, row.token_ids) if control is not None else None
                if isinstance(decision, Force):
                    if decision.replace_last:
                        row.token_ids.pop()
                        row.logprobs.pop()
                        row.forced.pop()
                    queue = list(decision.tokens)
                    t = queue.pop(0)
                    row.token_ids.append(t)
                    row.logprobs.append(0.0)
                    row.forced.append(True)
                    queues[r] = queue
                elif decision == STOP or t in eos_ids:
                    row.ended = "eos" if t in eos_ids else "stop"
                    if on_token is not None:
                        on_token(r, row.token_ids)
                    continue
            if on_token is not None:
                on_token(r, row.token_ids)
            if len(row.token_ids) >= max_new_tokens:
                continue
            keep.append(b)
            feed.append(t)
        if not keep:
            break
        fed = dict(zip((live[b] for b in keep), feed, strict=True))
        if len(keep) < len(live):  # drop finished rows (and their twins) from the batch and the cache
            twins_kept = [len(live) + j for j, r in enumerate(twinned) if r in fed]
            index = torch.tensor(keep + twins_kept, dtype=torch.long)
            cache.batch_select_indices(index)
            mask, next_pos = mask[index], next_pos[index]
            counts = counts[torch.tensor(keep, dtype=torch.long)] if counts is not None else None
            live = [live[b] for b in keep]
            twinned = [r for r in twinned if r in fed]
        tok = torch.tensor(feed + [fed[r] for r in twinned], dtype=torch.long).unsqueeze(-1)  # (B, 1)
        if counts is not None:
            counts[torch.arange(len(feed)), tok[: len(feed), 0]] += 1
        mask = torch.cat([mask, torch.ones_like(tok)], dim=-1)
        out = model(input_ids=tok, attention_mask=mask, position_ids=next_pos, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return rows
