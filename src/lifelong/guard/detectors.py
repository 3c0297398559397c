"""Detectors: each looks at one kind of evidence and returns a `Finding` or None.

Two grades, as in Gymnasium's passive checker and Lightning's spike detection:
  * cheap, on every update: non-finite values, update-size spikes, entropy bounds, reward
    consistency within a group, reward saturation against the probes;
  * thorough, at evaluation points (the gate): KL drift on probe prompts, probe regressions, the
    likelihood of answers a healthy model should keep giving, and how many general answers changed.
Each has its own warm-up, window and tolerance. A finding's `reject` says whether the update must
be undone; flags are logged and acted on (e.g. quarantining a reward source) without a rollback.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lifelong.types import Episode


@dataclass(frozen=True)
class Finding:
    detector: str
    reject: bool  # True: undo the update; False: a flag, logged and acted on otherwise
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class NonFiniteCheck:
    """NaN/Inf in the loss, the gradient or the adapter weights."""

    def check(self, metrics: dict[str, float], nonfinite_params: int) -> Finding | None:
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad or nonfinite_params:
            return Finding(
                "non_finite",
                True,
                f"non-finite {', '.join(bad) or 'adapter weights'}",
                {"metrics": bad, "nonfinite_params": nonfinite_params},
            )
        return None


@dataclass
class UpdateSizeSpike:
    """An update far larger than recent ones (a learning-rate spike, a poisoned batch)."""

    factor: float = 10.0
    warmup: int = 3
    window: int = 20
    history: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.window)

    def check(self, size: float) -> Finding | None:
        if not math.isfinite(size):
            return Finding("update_spike", True, "update size is not finite", {"size": size})
        if len(self.history) >= self.warmup:
            median = statistics.median(self.history)
            if median > 0 and size > self.factor * median:
                return Finding(
                    "update_spike",
                    True,
                    f"update norm {size:.3g} is {size / median:.0f}x the recent median {median:.3g}",
                    {"size": size, "median": median, "factor": self.factor},
                )
        self.history.append(size)  # only accepted sizes become the baseline
        return None


@dataclass
class EntropyBounds:
    """Collapse (entropy near zero on every token) or gibberish (entropy far above the reference
    policy's on the same prompts). The upper bound is relative because a model's normal entropy
    depends on the model and the prompts (a random model sits at log |V|)."""

    low: float = 0.01
    margin: float = 2.0  # nats per token above the reference

    def check(self, entropy: float, where: str, reference: float | None = None) -> Finding | None:
        if not entropy >= self.low:  # also catches NaN
            return Finding(
                "entropy",
                True,
                f"policy entropy {entropy:.3f} on {where} has collapsed (below {self.low})",
                {"entropy": entropy, "where": where},
            )
        if reference is not None and entropy > reference + self.margin:
            return Finding(
                "entropy",
                True,
                f"policy entropy {entropy:.3f} on {where} exploded (reference {reference:.3f} + {self.margin})",
                {"entropy": entropy, "reference": reference, "where": where},
            )
        return None


@dataclass
class KLDriftGuard:
    """The policy moved too far on probe prompts since the last good version."""

    budget: float = 1.0  # nats per token

    def check(self, kl: float) -> Finding | None:
        if not kl <= self.budget:  # also catches NaN
            return Finding("kl_drift", True, f"KL drift {kl:.3f} nats/token exceeds budget {self.budget}", {"kl": kl})
        return None


@dataclass
class ProbeRegression:
    """A guarded task lost more than its budget against a reference: the last good version (tasks
    already reached), the pretrained model (general ability), or the last good version while the
    task was being trained (a drop there means its training signal is wrong: a flipped or garbage
    reward, or too large a step)."""

    budget: float = 0.10
    against: str = "the last good version"  # what the reference scores are, for the message
    detector: str = "probe_regression"  # the finding's name in guard_events.jsonl

    def check(self, scores: dict[str, float], reference: dict[str, float]) -> Finding | None:
        drops = {t: reference[t] - s for t, s in scores.items() if t in reference and reference[t] - s > self.budget}
        if drops:
            worst = max(drops, key=lambda t: drops[t])
            return Finding(
                self.detector,
                True,
                f"{worst} fell {100 * drops[worst]:.1f} pts below {self.against} (budget {100 * self.budget:.0f})",
                {"drops": drops, "scores": scores, "reference": reference},
            )
        return None

    def confirm(self, finding: Finding, rescore: Callable[[str], Rescored], probe_items: int) -> Finding:
        """Re-measure each over-budget drop of `finding` on fresh items. A drop stands only if,
        over all items scored (the probes and the fresh ones), it is still over the budget.

        Why: at 32 probes one item is 3 points, and the standard error of a difference of two
        scores near 50% is about 12 points, so a budget of 5 or 10 points fires on chance, and a
        rollback on chance throws away real learning (seen: a 6.2-point probe drop of the task being
        trained was 1.8 over 112 items; dev/LOG.md)."""
        pooled: dict[str, float] = {}
        rescored: dict[str, Rescored] = {}
        for task, drop in finding.evidence["drops"].items():
            r = rescored[task] = rescore(task)
            pooled[task] = (probe_items * drop + r.items * (r.reference - r.now)) / (probe_items + r.items)
        if not any(r.items for r in rescored.values()):
            return finding  # no fresh items for these tasks: the probes decide alone
        evidence = {**finding.evidence, "pooled_drops": pooled, "rescored": rescored, "probe_items": probe_items}
        confirmed = {t: d for t, d in pooled.items() if d > self.budget}
        worst = max(confirmed or pooled, key=lambda t: pooled[t])
        items = probe_items + rescored[worst].items
        if confirmed:
            message = (
                f"{worst} fell {100 * pooled[worst]:.1f} pts below {self.against} over {items} items"
                f" (budget {100 * self.budget:.0f})"
            )
            return Finding(self.detector, True, message, evidence)
        message = (
            f"{worst} fell {100 * finding.evidence['drops'][worst]:.1f} pts below {self.against} on the probes"
            f" but {100 * pooled[worst]:.1f} over {items} items: within budget {100 * self.budget:.0f}, kept"
        )
        return Finding(self.detector, False, message, evidence)


@dataclass
class AnswerLikelihoodDrop:
    """Answers a healthy model should keep giving became less likely: a probe group's mean per-token
    log-prob of its answers (teacher-forced, nats) fell more than `budget` below the better of the
    last good version and the pretrained model. Comparing with the better of the two bounds both one
    update's damage and what a stream of updates adds up to. Deterministic and defined even where
    greedy decoding is wrong, so it sees a held-out correction slip before its greedy answer changes."""

    budget: float = 0.3
    budgets: Mapping[str, float] = field(default_factory=dict)  # per group, where it differs

    def check(self, now: dict[str, float], last_good: dict[str, float], pretrained: dict[str, float]) -> Finding | None:
        floors = {
            g: max(last_good.get(g, -math.inf), pretrained.get(g, -math.inf)) - self.budgets.get(g, self.budget)
            for g in now
        }
        falls = {g: v for g, v in now.items() if math.isfinite(floors[g]) and not v >= floors[g]}  # NaN falls too
        if not falls:
            return None
        fell = sorted(falls, key=lambda g: falls[g] - floors[g])  # the worst first
        return Finding(
            "answer_likelihood",
            True,
            "; ".join(
                f"{g} answers fell to {now[g]:.3f} nats/token, below the floor {floors[g]:.3f} "
                f"(last good {last_good.get(g, math.nan):.3f}, pretrained {pretrained.get(g, math.nan):.3f})"
                for g in fell
            )
            + f" (budget {self.budget}{''.join(f', {g} {b}' for g, b in self.budgets.items())})",
            {"now": now, "last_good": last_good, "pretrained": pretrained},
        )


@dataclass(frozen=True)
class ChangedAnswers:
    """How many of `asked` prompts' greedy answers differ from a reference's (the pretrained model's),
    with a few of the differences as evidence, and how many of them were right before and are
    wrong now (`lost`; 0 where the caller cannot tell right from wrong)."""

    changed: int
    asked: int
    examples: tuple[tuple[str, str], ...] = ()  # (reference, now) answers of the first few changed
    lost: int = 0

    @property
    def share(self) -> float:
        return self.changed / self.asked if self.asked else math.nan

    @property
    def lost_share(self) -> float:
        return self.lost / self.asked if self.asked else math.nan

    @classmethod
    def between(
        cls,
        reference: Sequence[str],
        now: Sequence[str],
        examples: int = 8,
        right_before: Sequence[bool] | None = None,
        right_now: Sequence[bool] | None = None,
    ) -> ChangedAnswers:
        """Compare two equally long lists of answers (already reduced to what counts, e.g. first
        words), and, when given, whether each was right then and now; the lost answers lead the
        examples."""
        was_lost = [False] * len(reference)
        if right_before is not None and right_now is not None:
            was_lost = [b and not n for b, n in zip(right_before, right_now, strict=True)]
        changed = [(not gone, r, n) for r, n, gone in zip(reference, now, was_lost, strict=True) if r != n or gone]
        shown = tuple((r, n) for _, r, n in sorted(changed, key=lambda c: c[0]))  # stable: lost first
        return cls(sum(r != n for _, r, n in changed), len(reference), shown[:examples], sum(was_lost))


@dataclass(frozen=True)
class GeneralAnswersChanged:
    """More than `lost_budget` (a share) of the general prompts' greedy answers that the pretrained
    model got right are wrong now, or more than `budget` of them differ at all. The mean likelihood
    of the pretrained replies moved 0.01 nats while 1-2 of 40 unrelated questions got another
    answer (issue 18): a mean over all tokens dilutes a flip of a few answers, so the flips are
    counted, and the lost ones apart: a step that teaches anything moves some near-tie answers the
    pretrained model got wrong anyway (dev/LOG.md, stop 20), which costs a user nothing, while a
    right answer turned wrong is what a user meets as a regression. Compared with the pretrained
    model, not the last good version, so that changes cannot add up a few per version."""

    budget: float = 0.08
    lost_budget: float = 0.02

    def check(self, reading: ChangedAnswers | None) -> Finding | None:
        if reading is None or not reading.asked:
            return None  # not measured (the run path), or nothing was asked
        if reading.share <= self.budget and reading.lost_share <= self.lost_budget:
            return None
        asked = reading.asked
        shown = ", ".join(f"{r!r} -> {n!r}" for r, n in reading.examples)
        message = (
            f"{reading.lost} of {asked} general answers the pretrained model got right are wrong now"
            f" (budget {self.lost_budget:g}: {_allowed(self.lost_budget, asked)} of {asked})"
            if reading.lost_share > self.lost_budget
            else f"{reading.changed} of {asked} general answers changed from the pretrained model's"
            f" (budget {self.budget:g}: {_allowed(self.budget, asked)} of {asked})"
        )
        return Finding(
            "general_changed",
            True,
            f"{message}{f'; e.g. {shown}' if shown else ''}",
            {
                "changed": reading.changed,
                "lost": reading.lost,
                "asked": asked,
                "examples": reading.examples,
                "budget": self.budget,
                "lost_budget": self.lost_budget,
            },
        )


def _allowed(budget: float, asked: int) -> int:
    return math.floor(budget * asked + 1e-9)


@dataclass(frozen=True)
class Rescored:
    """A suspect task scored again on fresh held-out items by the current and the reference version."""

    now: float
    reference: float
    items: int


@dataclass
class RewardConsistency:
    """The same answer to the same item got different rewards: the reward source is noisy or
    corrupt. Groups where that happens are dropped from learning."""

    tolerance: float = 1e-6

    def screen(self, episodes: Iterable[Episode]) -> tuple[list[Episode], Finding | None]:
        by_group: dict[str, list[Episode]] = defaultdict(list)
        for ep in episodes:
            by_group[ep.group or ep.id].append(ep)
        kept: list[Episode] = []
        bad_groups = []
        for group, eps in by_group.items():
            rewards: dict[tuple[str, ...], set[float]] = defaultdict(set)
            for ep in eps:
                rewards[tuple(t.completion.answer.strip() for t in ep.turns)].add(round(ep.reward, 6))
            if any(max(r) - min(r) > self.tolerance for r in rewards.values()):
                bad_groups.append(group)
            else:
                kept.extend(eps)
        if not bad_groups:
            return kept, None
        finding = Finding(
            "reward_inconsistent",
            False,
            f"{len(bad_groups)}/{len(by_group)} groups gave different rewards to identical answers; dropped",
            {"groups": bad_groups},
        )
        return kept, finding


@dataclass
class RewardSaturation:
    """Training reward near perfect while held-out probes of the same task are far lower: the
    reward is being gamed or is broken. The task's rewards are quarantined until probes agree."""

    window: int = 3
    level: float = 0.97
    gap: float = 0.35
    recent: dict[str, deque[float]] = field(default_factory=dict)

    def check(self, task: str, train_reward: float, probe_score: float | None) -> Finding | None:
        history = self.recent.setdefault(task, deque(maxlen=self.window))
        history.append(train_reward)
        if probe_score is None or len(history) < self.window:
            return None
        mean = sum(history) / len(history)
        if mean >= self.level and mean - probe_score > self.gap:
            return Finding(
                "reward_saturation",
                False,
                f"{task}: training reward {mean:.2f} over {self.window} steps but held-out success "
                f"{probe_score:.2f}; reward quarantined",
                {"task": task, "train_reward": mean, "probe": probe_score},
            )
        return None
