"""Health measurements the guard decides on.

* `AdapterSnapshot` remembers the adapter weights before an update, so the size of the update
  (and NaN/Inf counts after it) can be measured without a second model.
* `ProbeDrift` measures how far the policy's output distribution has moved on fixed probe prompts
  since a reference version: completions are sampled once from the reference policy and scored
  under the current weights; KL(ref || now) is estimated per token with Schulman's k3 estimator,
  which is unbiased and never negative. Forgetting tracks exactly this drift (design.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lifelong.learn.logprobs import completion_logprobs
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Sample


def trainable(policy: Policy) -> list[torch.nn.Parameter]:
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


@dataclass(frozen=True)
class DriftReading:
    kl: float  # mean per-token KL(reference || current) on the reference's own samples
    entropy: float  # mean per-token entropy of the current policy on those tokens


class ProbeDrift:
    """KL drift on fixed probe prompts relative to a reference version of the policy."""

    def __init__(
        self, prompts: Sequence[Sequence[int]], samples_per_prompt: int = 2, max_tokens: int = 12, seed: int = 0
    ) -> None:
        self.prompts = [tuple(p) for p in prompts]
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.gen = GenerationConfig(thinking_tokens=0, answer_tokens=max_tokens, temperature=1.0)
        self._reference: list[Sample] = []

    def set_reference(self, policy: Policy) -> None:
        """Sample completions from the policy as it is now; later readings measure drift from it.
        They are drawn from a generator seeded here, never the run's: measuring a run must not
        change what it samples (runs with the guard on and off, or resumed and not, sample alike)."""
        contexts = [p for p in self.prompts for _ in range(self.samples_per_prompt)]
        completions = policy.respond(contexts, self.gen, torch.Generator().manual_seed(self.seed))
        self._reference = [
            Sample(tuple(ctx), c.token_ids, c.logprobs, c.loss_mask, 0.0)
            for ctx, c in zip(contexts, completions, strict=True)
            if sum(c.loss_mask) > 0
        ]

    @property
    def has_reference(self) -> bool:
        return bool(self._reference)

    @torch.no_grad()
    def read(self, policy: Policy) -> DriftReading:
        if not self._reference:
            return DriftReading(0.0, 0.0)
        was_training = policy.model.training
        policy.model.eval()
        try:
            logp, entropy, mask = completion_logprobs(policy.model, self._reference, policy.pad_id)
        finally:
            policy.model.train(was_training)
        ref = torch.zeros_like(logp)
        for i, s in enumerate(self._reference):
            ref[i, : len(s.sampler_logprobs)] = torch.tensor(s.sampler_logprobs)
        log_ratio = (logp - ref).clamp(-30, 30)  # log p_now / p_ref on tokens drawn from p_ref
        k3 = (torch.exp(log_ratio) - 1 - log_ratio) * mask
        tokens = mask.sum().clamp(min=1)
        kl = float(k3.sum() / tokens)
        return DriftReading(kl if math.isfinite(kl) else math.inf, float((entropy * mask).sum() / tokens))
