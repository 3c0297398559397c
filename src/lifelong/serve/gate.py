"""May this new adapter version go live? The serving learner asks an `AdapterGate` before every swap.

`ProbeGate` is the minimal gate that ships with `serve/`: a candidate goes live only if its weights
are finite and, on every probe group, its score has not fallen by more than `probe_budget` below the
better of the live adapter and the base adapter (version 0). Comparing with the better of the two
bounds the loss of a single step and the total loss a stream of updates can accumulate.

Probe groups of a tenant:
  - `operator`: the operator's probes (`--probes FILE`, or built-in general questions), which no
    tenant can touch, so a tenant sending flipped feedback cannot move the bar;
  - `holdout`: every Nth correction the tenant sent, held out and never trained on.
A probe's score is the mean per-token log-prob (nats) of its answer after the prompt and the answer
marker, teacher-forced: deterministic, cheap, and defined even when greedy decoding gets it wrong.

The full guard (guard/, issue 5) plugs in by implementing `AdapterGate` and naming its factory in
`LearnerConfig.gate`; it receives the same `Candidate` (adapters, probes, the round's metrics).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from lifelong.errors import ConfigError
from lifelong.learn.logprobs import completion_logprobs
from lifelong.model.policy import ANSWER_MARKER, Policy
from lifelong.serve.adapters import Adapter, load_adapter
from lifelong.serve.config import GateConfig
from lifelong.types import Sample


@dataclass(frozen=True)
class Probe:
    """A question with the answer a healthy model should keep giving."""

    prompt: str
    answer: str
    tenant: str | None = None  # None = every tenant


# General questions a small instruct model answers; used when the operator gives no probe file.
DEFAULT_PROBES: tuple[Probe, ...] = (
    Probe("What is 2 + 2?", "4"),
    Probe("What is the capital of France?", "Paris"),
    Probe("What color is the sky on a clear day?", "Blue"),
    Probe("How many days are in a week?", "7"),
    Probe("What is the opposite of hot?", "Cold"),
    Probe("What is 10 minus 3?", "7"),
    Probe("Which animal says meow?", "Cat"),
    Probe("What is the first letter of the word apple?", "A"),
)


def load_probes(path: Path | None) -> tuple[Probe, ...]:
    """Probes from a JSONL file of {"prompt", "answer", "tenant"?}; None gives DEFAULT_PROBES.
    An empty file means no operator probes (the gate then only watches held-out corrections)."""
    if path is None:
        return DEFAULT_PROBES
    fix = 'write one JSON object per line: {"prompt": "...", "answer": "...", "tenant": "alice"} (tenant optional)'
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read probes file {path} ({exc.strerror})", "check the --probes path") from exc
    probes = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            probes.append(Probe(str(d["prompt"]), str(d["answer"]), d.get("tenant")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"probes file {path} line {n} is not valid ({type(exc).__name__})", fix) from exc
    return tuple(probes)


def answer_sample(policy: Policy, prompt_ids: Sequence[int], answer: str, end: bool = True) -> Sample:
    """The reply "Answer: <answer><eos>" to a prompt as a Sample: the marker is context (mask 0), the
    answer (and with `end` the end of turn) is the target (mask 1). No reasoning: a target answer
    never trains the model to answer against a chain of thought it wrote (see learner.py). Probes
    leave the end of turn out: they ask "does it still give this answer", and a shared end-of-turn
    token would let any short answer raise every probe's score."""
    tok = policy.tokenizer
    marker = list(tok.encode(ANSWER_MARKER, add_special_tokens=False))
    target = list(tok.encode(" " + answer.strip(), add_special_tokens=False))
    if end:
        target.append(int(tok.eos_token_id))
    ids = tuple(marker + target)
    return Sample(tuple(prompt_ids), ids, (0.0,) * len(ids), (0,) * len(marker) + (1,) * len(target), 1.0)


@torch.no_grad()
def answer_logprob(policy: Policy, samples: Sequence[Sample], micro_batch: int = 16) -> float:
    """Mean over samples of the mean per-token log-prob of their targets (nats; higher is better)."""
    if not samples:
        return 0.0
    scores: list[float] = []
    for i in range(0, len(samples), micro_batch):
        chunk = samples[i : i + micro_batch]
        logp, _, mask = completion_logprobs(policy.model, chunk, policy.pad_id)  # (B, C)
        scores += ((logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class ProbeGroup:
    name: str  # "operator" | "holdout" (a full guard may add its own)
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class Candidate:
    """What a gate reviews: a tenant's candidate adapter, the adapters it is compared with, probes."""

    tenant: str
    version: int
    adapter: Adapter
    live: Adapter
    live_version: int
    base: Adapter
    probes: tuple[ProbeGroup, ...]
    metrics: dict[str, float] = field(default_factory=dict)  # what the learner measured this round


@dataclass(frozen=True)
class GateDecision:
    accept: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


class AdapterGate(Protocol):
    """Decides whether a candidate adapter version may replace the live one. `policy` is the
    learner's own model, free to load adapters into; the learner reloads what it needs after."""

    def review(self, policy: Policy, candidate: Candidate) -> GateDecision: ...


class ProbeGate:
    """Finite weights, and no probe group down by more than the budget (see the module docstring).

    Scores of the base and of live versions are cached by (adapter, probe set): a version's score
    does not change while its probes do not, so each round scores only its candidate (one forward
    pass per probe group instead of three), and the kept candidate's score is the next live score."""

    def __init__(self, config: GateConfig = GateConfig()) -> None:
        self.config = config
        self._cache: dict[tuple[str, str, tuple[Sample, ...]], float] = {}

    def _score(self, policy: Policy, key: str | None, adapter: Adapter, group: ProbeGroup) -> float:
        cached = self._cache.get((key, group.name, group.samples)) if key is not None else None
        if cached is not None:
            return cached
        load_adapter(policy, adapter)
        score = answer_logprob(policy, group.samples)
        if key is not None:
            self._cache[(key, group.name, group.samples)] = score
        return score

    def review(self, policy: Policy, candidate: Candidate) -> GateDecision:
        bad = [k for k, v in candidate.adapter.items() if not bool(torch.isfinite(v).all())]
        if bad:
            return GateDecision(False, f"non-finite weights in {len(bad)} tensors (e.g. {bad[0]})", {})
        groups = [g for g in candidate.probes if g.samples]
        live_key = "base" if candidate.live_version == 0 else f"{candidate.tenant}:{candidate.live_version}"
        metrics: dict[str, float] = {}
        failures = []
        for g in groups:
            base = self._score(policy, "base", candidate.base, g)
            live = self._score(policy, live_key, candidate.live, g)
            cand = self._score(policy, f"{candidate.tenant}:{candidate.version}", candidate.adapter, g)
            floor = max(base, live) - self.config.probe_budget
            metrics |= {
                f"probe/{g.name}/base": base,
                f"probe/{g.name}/live": live,
                f"probe/{g.name}/candidate": cand,
                f"probe/{g.name}/count": float(len(g.samples)),
            }
            if not math.isfinite(cand) or cand < floor:
                failures.append(
                    f"{g.name} probes fell to {cand:.3f} nats/token, below the floor {floor:.3f} "
                    f"(live {live:.3f}, base {base:.3f}, budget {self.config.probe_budget})"
                )
        if failures:
            return GateDecision(False, "; ".join(failures), metrics)
        return GateDecision(True, "probes within budget" if groups else "no probes; weights finite", metrics)
