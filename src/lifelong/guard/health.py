"""Health measurements the guard decides on: how far the policy's outputs have drifted.

`ProbeDrift` measures how far the policy's output distribution has moved on fixed probe prompts
since a reference version: completions are sampled once from the reference policy and scored under
the current weights; KL(ref || now) is estimated per token with Schulman's k3 estimator, which is
unbiased and never negative. Forgetting tracks exactly this drift (design.md). The size of an update
and NaN counts in the adapters are measured with model/adapters.py's `AdapterSnapshot`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lifelong.learn.logprobs import completion_logprobs
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Sample


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
