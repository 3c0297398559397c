"""Keeping samplers in step with the learner: adapter weights by version, bounded staleness, checks.

A sampler that is not the learner's own module holds a copy of the weights, and a copy can go stale
silently: the failure users of peer frameworks report most ("inference hits the base model, not the
adapter"). Three small tools guard against it:

- the adapters travel as a peft state dict tagged with the learner's `Policy.version`; a sampler
  stamps every episode with the version it actually loaded (`Episode.adapter_version`);
- `within_staleness` / `check_staleness`: an episode sampled `lag = current - sampled` updates ago
  is usable only when `0 <= lag <= max_staleness`; the learner's importance ratio against the
  sampler's own log-probs corrects what is left (learn/grpo.py);
- `logprob_mismatch`: the learner re-scores a few sampled completions that claim its current
  version; a sampler on the wrong weights (or an engine with different numerics, like vLLM) shows
  up here as a number instead of as a run that quietly stops learning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from lifelong.learn.logprobs import completion_logprobs
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Episode, Sample


class StalenessError(RuntimeError):
    """Episodes sampled with adapters older than the bound reached the learner (a bug, not bad input)."""


def within_staleness(sampled: int, current: int, max_staleness: int) -> bool:
    """True when weights of version `sampled` may still be learned from at version `current`.

    Versions only grow (a rollback also takes a new version), so a lag below 0 means the episode
    claims weights the learner never had: refused like a lag above the bound.
    """
    return 0 <= current - sampled <= max_staleness


def check_staleness(versions: Iterable[int], current: int, max_staleness: int) -> None:
    """Raise StalenessError if any sampled version is outside the bound."""
    bad = sorted({v for v in versions if not within_staleness(v, current, max_staleness)})
    if bad:
        raise StalenessError(
            f"episodes sampled with adapter versions {bad} reached the learner at version {current} "
            f"(max_staleness {max_staleness})"
        )


def adapter_state(policy: Policy) -> dict[str, torch.Tensor]:
    """The adapter weights only (peft state dict: a few MB, not the model), detached copies."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy.model).items()}


def mirror_version(copy: Policy, version: int) -> None:
    """A sampler's copy of the policy now holds the learner's adapters of `version` (-1: none yet).
    Outside the learning core (loop/learning.py) this is the only writer of `Policy.version`, and it
    writes only copies: the learner's own policy is versioned by its core alone."""
    copy.version = version


def load_adapter_state(policy: Policy, state: dict[str, torch.Tensor], version: int) -> None:
    """Load adapters sent by the learner into a copy and mirror their version; refuse a mismatched layout."""
    result = set_peft_model_state_dict(policy.model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        # Different LoRA settings on the two sides would otherwise leave the sampler on its own init.
        raise ValueError(
            f"adapter weights do not fit this model ({len(unexpected)} unknown keys, e.g. {unexpected[0]})"
        )
    mirror_version(policy, version)


@torch.no_grad()
def logprob_mismatch(
    policy: Policy, episodes: Sequence[Episode], temperature: float, limit: int = 4
) -> dict[str, float] | None:
    """Mean and max |log p_learner - log p_sampler| per sampled token, on up to `limit` completions
    that were sampled with the learner's current version (so staleness is not counted). None when
    there is nothing to compare."""
    samples: list[Sample] = []
    for e in episodes:
        if e.adapter_version != policy.version:
            continue
        for t in e.turns:
            c = t.completion
            if sum(c.loss_mask) and len(samples) < limit:
                samples.append(Sample(t.prompt_ids, c.token_ids, c.logprobs, c.loss_mask, 0.0))
    if not samples:
        return None
    was_training = policy.model.training
    policy.model.eval()
    try:
        # Greedy sampling records T=1 log-probs (model/sampler.py), so compare at T=1 then.
        logp, _, mask = completion_logprobs(policy.model, samples, policy.pad_id, temperature or 1.0)  # (B, C)
    finally:
        policy.model.train(was_training)
    old = torch.zeros_like(logp)
    for i, s in enumerate(samples):
        old[i, : len(s.sampler_logprobs)] = torch.tensor(s.sampler_logprobs)
    diff = (logp - old).abs() * mask
    return {
        "sampler/logprob_mismatch": float(diff.sum() / mask.sum()),
        "sampler/logprob_mismatch_max": float(diff.max()),
        "sampler/checked_tokens": float(mask.sum()),
    }


def write_rollout(
    path: Path | None,
    policy: Policy,
    episodes: Sequence[Episode],
    gen: GenerationConfig,
    mismatch_samples: int = 4,
    **fields: Any,
) -> None:
    """Append one line per actor call to `rollouts.jsonl` beside metrics.jsonl (whose format stays
    the single-process one): which versions sampled, how stale, and the sampler/learner mismatch."""
    if path is None or not episodes:
        return
    lags = [policy.version - e.adapter_version for e in episodes]
    record: dict[str, Any] = {
        "time": time.time(),
        "split": episodes[0].split,
        "episodes": len(episodes),
        "version": policy.version,
        "staleness/max": max(lags),
        "staleness/mean": sum(lags) / len(lags),
        **fields,
    }
    # Only sampled calls: greedy probe log-probs are never learned from, and engines differ in
    # what they report for them.
    if mismatch_samples and gen.temperature > 0:
        record |= logprob_mismatch(policy, episodes, gen.temperature, mismatch_samples) or {}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
