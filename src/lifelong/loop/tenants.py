"""The learning half of the runtime for a server's tenants: feedback in, a guarded adapter version out.

`lifelong serve` answers; this learns, in its own process (serve/worker.py). It is the same core
`lifelong run` learns through (loop/learning.py): the same learners, the same `Guard` with all its
detectors, rollback ring and learning-rate back-off, the same checkpoints, one set per tenant under
`<folder>/<tenant>/`. A round for one tenant:

  restore the tenant's newest checkpoint (the first round starts from the shared initial adapter and
  gates it as the pretrained reference) -> its pending feedback becomes episodes and lessons
  (loop/feedback.py), stored before learning -> rated replies make a policy-gradient update that
  also holds general-ability anchor items at the pretrained model's answers; corrections make a
  self-distillation update (or plain NLL, `CorrectionRule.NLL`) holding the same anchors -> the
  guard's cheap checks -> the gate: greedy answers to general-ability probes (`facts`, `instruct`,
  in the plain chat format the server answers in) held to the last good version and the pretrained
  model, KL drift, the likelihood of three groups of answers: the pretrained model's own replies
  to the probes (alone and after example turns: general behaviour, its format included), held-out
  corrections and the operator's probes, and how many of those general prompts' greedy answers
  differ from the pretrained model's -> kept: checkpoint, recorded live;
  rejected: rolled back, the learning rate backed off, recorded rejected.
The feedback a round consumed is recorded with its version in one transaction, so a crash anywhere
redoes the round, never loses or double-counts feedback. Rewards come only from people's ratings
and corrections: nothing here reads the chain of thought.

Consolidation (`consolidate`) is a round on the tenant's memory instead of its feedback: its
unconsolidated items become self-distillation lessons (loop/memory_lessons.py: questions about each
item, the teacher with the item quoted, the student without), learned, gated and recorded the same
way; a kept version marks its items consolidated in the same transaction as its record, a rejected
one leaves them for a later try. Items deleted after they were consolidated are unlearned in the same
round (`absence_lessons`: the same questions, the pretrained model as the teacher) and marked
forgotten the same way.
"""

from __future__ import annotations

import enum
import json
import math
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from lifelong.envs.base import Env
from lifelong.errors import ConfigError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.detectors import ChangedAnswers
from lifelong.guard.gate import GENERAL_ANSWERS, Guard, GuardConfig, Verdict
from lifelong.learn.distill import DistillConfig, SelfDistiller
from lifelong.learn.grpo import GRPOConfig, GRPOLearner
from lifelong.learn.learner import LessonLearner
from lifelong.learn.logprobs import completion_log_softmax, completion_logprobs, micro_batches
from lifelong.learn.sft import CorrectionNLL, SFTConfig
from lifelong.loop.anchors import AnchorPool, asked_after_examples
from lifelong.loop.feedback import Experience, experience_from_feedback, rated_batch
from lifelong.loop.learning import LearningCore, MetricsLog
from lifelong.loop.memory_lessons import absence_lessons, memory_lessons
from lifelong.memory.recall import with_exchange
from lifelong.memory.store import CONSOLIDATION_METRIC, FORGOTTEN_METRIC, ExperienceStore
from lifelong.model.adapters import Adapter, adapter_state, load_adapter
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.streams.stream import ProbeSet, Task
from lifelong.timing import Mark, part
from lifelong.types import AdapterRecord, AdapterStatus, Feedback, Lesson, Sample, ServedRequest

# General ability as the server's users meet it: the run path's general-ability tasks, asked in
# the plain chat format. Their probes are the gate's; their other items are the anchor's.
GENERAL_TASKS = (Task.of("facts"), Task.of("instruct"))


class CorrectionRule(enum.StrEnum):
    DISTILL = "distill"  # on-policy self-distillation: teacher = the policy with the correction quoted
    NLL = "nll"  # plain negative log-likelihood of the corrected reply (the baseline)


def _serve_guard() -> GuardConfig:
    # No fresh items to re-measure on: the general tasks' other items are the anchor's (judged on
    # their probes alone, as in the run path).
    return GuardConfig(confirm_items=0)


# Adam's first steps move every adapter weight by about the full rate: a tenant's first correction
# round changed 7 of 128 general answers at once, 1 with the rate warmed up over 10 steps (dev/LOG.md,
# stop 20). The count is the optimizer's, so a tenant whose versions were all rolled back warms up again.
SERVE_WARMUP_STEPS = 10


def _serve_grpo() -> GRPOConfig:
    # Ratings are few and noisy: a small group, a modest KL to the base model, the anchor on.
    return GRPOConfig(learning_rate=2e-4, group_size=2, kl_coef=0.02, temperature=1.0, warmup_steps=SERVE_WARMUP_STEPS)


def _serve_distill() -> DistillConfig:
    return DistillConfig(warmup_steps=SERVE_WARMUP_STEPS)


@dataclass(frozen=True)
class TenantLearningConfig:
    """How a tenant's feedback is learned from and guarded."""

    correction_rule: CorrectionRule = CorrectionRule.DISTILL
    steps_per_round: int = 2  # updates per round on the round's feedback
    baseline_window: int = 64  # a tenant's running baseline = mean of its last N ratings
    checkpoints_kept: int = 3  # checkpoints per tenant (the newest good one is never pruned)
    probe_items: int = 32  # held-out general-ability items per task at every gate
    anchor_items: int = 32  # general-ability items per task held to the pretrained answers
    anchor_per_step: int = 16
    answer_tokens: int = 24  # greedy reply budget of a probe
    # Answered example turns before every other anchor item, and before the second reading of each
    # probe in the gate's `general` likelihood: the multi-turn form people chat in (loop/anchors.py).
    shots: int = 2
    # Consolidation: memory items per consolidation round (oldest first; the rest wait for the next),
    # each made into 1 + paraphrases lessons (loop/memory_lessons.py), all of them in each of the
    # round's steps (micro-batched): Adam moves every weight by about the rate per step whatever the
    # batch, so splitting the lessons over more steps would only move the general answers further.
    consolidate_max_items: int = 32
    consolidate_paraphrases: int = 2
    seed: int = 0
    grpo: GRPOConfig = field(default_factory=_serve_grpo)
    distill: DistillConfig = field(default_factory=_serve_distill)
    guard: GuardConfig = field(default_factory=_serve_guard)

    def __post_init__(self) -> None:
        object.__setattr__(self, "correction_rule", CorrectionRule(self.correction_rule))
        if self.steps_per_round < 1 or self.checkpoints_kept < 1:
            raise ConfigError("steps_per_round and checkpoints_kept must be >= 1", "the defaults are 2 and 3")
        if self.probe_items < 1 or self.anchor_items < 0 or self.anchor_per_step < 0 or self.shots < 0:
            raise ConfigError(
                "probe_items must be >= 1, anchor_items, anchor_per_step and shots >= 0", "defaults: 32, 32, 16, 2"
            )
        if self.consolidate_max_items < 1 or self.consolidate_paraphrases < 0:
            raise ConfigError("consolidate_max_items must be >= 1, consolidate_paraphrases >= 0", "defaults: 32 and 2")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TenantLearningConfig:
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:  # e.g. consolidate_lessons_per_step, removed in stop 21 (all lessons go in each step)
            raise ConfigError(
                f"unknown learning setting(s): {', '.join(unknown)}",
                f"remove them; the settings are {', '.join(f.name for f in fields(cls))}",
            )
        # A part the dict leaves out, or a field of one, keeps the server's default, not the class's.
        d["grpo"] = replace(_serve_grpo(), **d.get("grpo", {}))
        d["distill"] = replace(_serve_distill(), **d.get("distill", {}))
        d["guard"] = replace(_serve_guard(), **d.get("guard", {}))
        return cls(**d)


@dataclass(frozen=True)
class OperatorProbe:
    """A question with the answer a healthy model should keep giving (`--probes FILE`)."""

    prompt: str
    answer: str
    tenant: str | None = None  # None = every tenant


def load_operator_probes(path: Path | None) -> tuple[OperatorProbe, ...]:
    """Probes from a JSONL file of {"prompt", "answer", "tenant"?}; none without a file."""
    if path is None:
        return ()
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
            probes.append(OperatorProbe(str(d["prompt"]), str(d["answer"]), d.get("tenant")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"probes file {path} line {n} is not valid ({type(exc).__name__})", fix) from exc
    return tuple(probes)


def reply_sample(policy: Policy, prompt_ids: Sequence[int], reply: str) -> Sample:
    """A reply to a prompt as a teacher-forced Sample, every token a target (no end of turn: a probe
    asks "does it still give this answer", and a shared end-of-turn token would raise them all)."""
    ids = tuple(policy.tokenizer.encode(reply.strip(), add_special_tokens=False))
    return Sample(tuple(prompt_ids), ids, (0.0,) * len(ids), (1,) * len(ids), 1.0)


@torch.no_grad()
def reply_likelihood(policy: Policy, samples: Sequence[Sample], micro_batch: int = 16) -> float:
    """Mean over samples of the mean per-token log-prob of their replies (nats; higher is better)."""
    scores: list[float] = []
    for i in range(0, len(samples), micro_batch):
        logp, _, mask = completion_logprobs(policy.model, samples[i : i + micro_batch], policy.pad_id)  # (B, C)
        scores += ((logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
    return sum(scores) / len(scores) if scores else math.nan


@torch.no_grad()
def greedy_gives(policy: Policy, samples: Sequence[Sample], micro_batch: int = 16) -> list[bool]:
    """Whether greedy decoding from each sample's prompt would produce its completion: every target
    token the argmax after the ones before it (one teacher-forced forward, no decoding)."""
    given: list[bool] = []
    for rows in micro_batches(samples, micro_batch):
        logp, ids, mask = completion_log_softmax(policy.model, list(samples[rows]), policy.pad_id)  # (B, C, V)
        given += ((logp.argmax(-1) == ids) | (mask == 0)).all(-1).tolist()
    return given


def first_word(text: str) -> str:
    """The answer a reply gives, as benchmarks/chat_parity.py scores it: its first word, lower-cased
    and stripped of punctuation (a reply that changes after its first word gives the same answer)."""
    words = text.strip().split()
    return words[0].strip(string.punctuation + "“”‘’").lower() if words else ""


@dataclass(frozen=True)
class PretrainedReplies:
    """The pretrained model's greedy replies to the general prompts (the probes, then the probes
    after example turns), as the gate reads them."""

    samples: tuple[Sample, ...]  # teacher-forced, empty replies left out: the `general` likelihood group
    first_words: tuple[str, ...]  # one per prompt, empty replies included: the answers counted as changed
    right: tuple[bool, ...]  # one per prompt: solved as its task scores it (a right one turned wrong is lost)


INITIAL = "_initial"  # folder of the initial adapter beside the tenants' (tenant names start alphanumeric)


def ensure_initial_adapter(policy: Policy, folder: Path) -> Adapter:
    """The adapter every tenant starts from: the LoRA initialisation, saved once in
    `<folder>/_initial/` (verified like any checkpoint) so that the server, the learner and every
    restart start from the same weights. Loads it into the policy and returns it."""
    ring = CheckpointRing(folder / INITIAL, keep=1)
    checkpoint = ring.latest()
    if checkpoint is None:
        ring.save(policy, None, 0, {"initial": True})
    else:
        ring.restore(checkpoint, policy, None)
    return adapter_state(policy)


def run_id(tenant: str) -> str:
    """The run id of a tenant's episodes in the experience store."""
    return f"serve/{tenant}"


class TenantLearner:
    """One learning round at a time, for one tenant; holds what all tenants share (the model, the
    probes, the anchor pool answered by the pretrained model)."""

    def __init__(
        self,
        config: TenantLearningConfig,
        policy: Policy,
        store: ExperienceStore,
        folder: Path,
        initial: Adapter,
        operator_probes: Sequence[OperatorProbe] = (),
    ) -> None:
        self.config = config
        self.policy = policy
        self.store = store
        self.folder = folder
        self.initial = initial
        self.operator_probes = tuple(operator_probes)
        self.probes = {t: ProbeSet(t, config.probe_items) for t in GENERAL_TASKS}
        self.greedy = GenerationConfig(answer_tokens=config.answer_tokens, temperature=0.0, protocol=False)
        self._probe_prompts = [(t, s, policy.chat_start(t.make().reset(seed=s)[0])) for t in GENERAL_TASKS
                               for s in self.probes[t].seeds]  # fmt: skip
        # Shared by every tenant: the pretrained model's plain replies, built once.
        self.anchors = AnchorPool(
            policy, list(self.probes.values()), config.anchor_items, config.anchor_per_step, config.seed,
            self.greedy, active=config.grpo.anchor_coef > 0 or config.distill.anchor_coef > 0, shots=config.shots,
        )  # fmt: skip
        # Every probe again, after `shots` answered turns of the next probes of its task.
        self._shot_prompts: list[list[int]] = []
        for task in GENERAL_TASKS if config.shots else ():
            env, seeds = task.make(), self.probes[task].seeds
            self._shot_prompts += [asked_after_examples(policy, env, seeds, j, config.shots) for j in range(len(seeds))]
        # The probe item of every general prompt the gate asks: the probes alone, then (with shots)
        # the same probes in the same order after example turns.
        probe_items = [(task, seed) for task, seed, _ in self._probe_prompts]
        self._general_items = probe_items * (2 if self._shot_prompts else 1)
        self._pretrained: PretrainedReplies | None = None  # built on first use

    # ---- the round --------------------------------------------------------------------------------
    def round(self, tenant: str, items: Sequence[Feedback]) -> AdapterRecord:
        """Learn from `items` (a tenant's pending feedback) and record the version it made."""
        started = Mark.now()
        version = self.store.next_version(tenant)
        core = self._core(tenant, version)
        tokenizer = self.policy.tokenizer
        experience = experience_from_feedback(
            self.store, tenant, items, tokenizer, int(tokenizer.eos_token_id), self.prompt,
            self.config.baseline_window,
        )  # fmt: skip
        self.store.add(experience.episodes, run_id=run_id(tenant), step=version, model=self.policy.name,
                       tenant=tenant, skip_stored=True)  # fmt: skip
        metrics: dict[str, float] = {
            "round/items": float(len(items)),
            "round/rated": float(len(experience.rated)),
            "round/corrections": float(len(experience.corrections)),
        }
        experience = self._still_to_learn(experience, metrics)
        verdict = self._learn(core, version, experience, metrics)
        if verdict is None:  # nothing to learn: no new version, the feedback is still consumed
            why = "every correction is already answered" if experience.corrections else "no learning signal"
            return self._record(tenant, version, AdapterStatus.REJECTED, None, why, metrics, items)
        return self._conclude(core, tenant, version, verdict, metrics, started, "passed the guard", items)

    def consolidate(self, tenant: str) -> AdapterRecord | None:
        """Distil the tenant's unconsolidated memory items into its adapter and unlearn its deleted
        items that were consolidated before (`consolidate_max_items` in all, oldest first, deleted
        ones first: a person asked for them to be gone), through the same update, guard and gate as
        a round; a kept version marks them consolidated and forgotten, a rejected one leaves them
        for a later try. None: nothing to do."""
        cfg = self.config
        gone = self.store.unforgotten_memory(tenant, limit=cfg.consolidate_max_items)
        items = self.store.unconsolidated_memory(tenant, limit=cfg.consolidate_max_items - len(gone))
        if not items and not gone:
            return None
        paraphrases = cfg.consolidate_paraphrases
        lessons = [lesson for item in items for lesson in memory_lessons(self.policy, item, paraphrases)]
        lessons += [lesson for item in gone for lesson in absence_lessons(self.policy, item, paraphrases)]
        kept = f"consolidated {len(items)} memory items"
        if gone:
            absence = f"trained the absence of {len(gone)} deleted"
            kept = f"{kept}, {absence}" if items else f"{absence} memory items"
        return self.study(
            tenant,
            lessons,
            kept,
            {CONSOLIDATION_METRIC: float(len(items)), FORGOTTEN_METRIC: float(len(gone))},
            consolidated=[i.id for i in items],
            forgotten=[i.id for i in gone],
            lessons_as="consolidate",
        )

    def study(
        self,
        tenant: str,
        lessons: Sequence[Lesson],
        kept: str,
        metrics: dict[str, float] | None = None,
        consolidated: Sequence[str] = (),
        lessons_as: str = "lesson",
        forgotten: Sequence[str] = (),
    ) -> AdapterRecord:
        """A round on `lessons` alone (the tenant's learning rule: distillation, or NLL of their
        successes), guarded and gated like any round; a kept version records `consolidated` (memory
        item ids) as consolidated and `forgotten` (deleted items whose absence the lessons trained)
        as forgotten."""
        started = Mark.now()
        version = self.store.next_version(tenant)
        core = self._core(tenant, version)
        metrics = {**(metrics or {}), f"{lessons_as}/lessons": float(len(lessons))}
        experience = Experience(tenant, (), lessons=tuple(lessons))
        verdict = self._learn(core, version, experience, metrics, lessons_as)
        if verdict is None:  # no lessons: never mark what was not learned
            return self._record(tenant, version, AdapterStatus.REJECTED, None, "no learning signal", metrics, ())
        return self._conclude(core, tenant, version, verdict, metrics, started, kept, (), consolidated, forgotten)

    def _conclude(
        self,
        core: LearningCore,
        tenant: str,
        version: int,
        verdict: Verdict,
        metrics: dict[str, float],
        started: Mark,  # the round's start
        kept: str,
        items: Sequence[Feedback],
        consolidated: Sequence[str] = (),
        forgotten: Sequence[str] = (),
    ) -> AdapterRecord:
        """After the updates: the gate, then keep (checkpoint, live) or roll back (rejected), recorded
        with the feedback consumed and, when kept, the memory items consolidated and forgotten."""
        if verdict.keep:
            with part("probes"):
                scores, likelihoods, changed = self.evaluate(tenant)
            metrics |= {f"probe/{k}": v for k, v in scores.items()}
            metrics |= {f"likelihood/{k}": v for k, v in likelihoods.items()}
            metrics |= {
                "general/changed": changed.share,
                "general/changed_answers": float(changed.changed),
                "general/lost_answers": float(changed.lost),
            }
            verdict = core.gate(
                version, scores, list(scores), [t.label for t in GENERAL_TASKS], likelihoods=likelihoods,
                changed=changed,
            )  # fmt: skip
        metrics["time/round_s"] = started.seconds()
        metrics |= {f"time/{k}_s": v for k, v in started.parts().items()}  # where the round's time went
        if verdict.keep:
            core.mark_good(scores, likelihoods)
            path = core.checkpoint(version, good=True)
            return self._record(
                tenant, version, AdapterStatus.LIVE, path, kept, metrics, items, consolidated, forgotten
            )
        core.rollback(version, verdict)
        core.checkpoint(version, good=False)  # the good weights again, with the backed-off learning rate
        return self._record(tenant, version, AdapterStatus.REJECTED, None, verdict.reason, metrics, items)

    def _learn(
        self,
        core: LearningCore,
        version: int,
        experience: Experience,
        metrics: dict[str, float],
        lessons_as: str = "correction",
    ) -> Verdict | None:
        """The round's updates; the first rejecting verdict stops them. None: nothing to learn.
        All the lessons are distilled in each of the `steps_per_round` steps (in micro-batches);
        their metrics are keyed `<lessons_as>/...`."""
        anchors = self.anchors.for_step(version)
        batch = rated_batch(experience, self.config.grpo.scale_rewards, anchors)
        batch = replace(batch, samples=self._on_policy(batch.samples))
        if not batch.samples and not experience.lessons:
            return None
        for _ in range(self.config.steps_per_round):
            if batch.samples:
                result = core.update(version, batch)
                metrics |= {f"rated/{k}": v for k, v in result.report.metrics.items()}
                if not result.keep:
                    return result.verdict
            if experience.lessons:
                result = core.distil(version, experience.lessons, reference=core.good_adapters, anchors=anchors)
                metrics |= {f"{lessons_as}/{k}": v for k, v in result.report.metrics.items()}
                if not result.keep:
                    return result.verdict
        return Verdict(True)

    def _still_to_learn(self, experience: Experience, metrics: dict[str, float]) -> Experience:
        """The round's correction lessons less repeats of one correction and those the live weights
        already give greedily (plain-chat replies; a reasoning reply's chain cannot be checked so).
        Learning again what is answered teaches nothing and still moves every weight by about the
        rate: a third round that raised no correction's answer (7 of 20 right before and after it)
        changed 14 of 128 general answers (dev/LOG.md, stop 21). The episodes are stored all the same."""
        seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        distinct: list[Lesson] = []
        for lesson in experience.lessons:
            key = (lesson.student_prompt, lesson.successes[0].token_ids if lesson.successes else ())
            if key not in seen:
                seen.add(key)
                distinct.append(lesson)
        checkable = [i for i, lesson in enumerate(distinct) if not lesson.protocol and lesson.successes]
        samples = [reply_sample(self.policy, distinct[i].student_prompt, distinct[i].successes[0].answer)
                   for i in checkable]  # fmt: skip
        answered = {i for i, given in zip(checkable, greedy_gives(self.policy, samples), strict=True) if given}
        metrics["correction/repeats"] = float(len(experience.lessons) - len(distinct))
        metrics["correction/already_answered"] = float(len(answered))
        kept = tuple(lesson for i, lesson in enumerate(distinct) if i not in answered)
        metrics["correction/lessons"] = float(len(kept))
        return replace(experience, lessons=kept)

    def _on_policy(self, samples: Sequence[Sample]) -> tuple[Sample, ...]:
        """Rated replies with the live adapter's log-probs as their behaviour log-probs. A reply was
        sampled by some earlier version, often greedily or under top-p, whose recorded log-probs are
        not of the distribution the learner's importance ratio compares with; scoring them now makes
        the first step on-policy as of the live version (ratio 1)."""
        out = []
        grpo = self.config.grpo
        for rows in micro_batches(samples, grpo.micro_batch, grpo.micro_batch_tokens):  # GRPO's, as it learns from them
            chunk = list(samples[rows])
            with torch.no_grad():
                logp, _, _ = completion_logprobs(self.policy.model, chunk, self.policy.pad_id, with_entropy=False)
            for row, s in enumerate(chunk):
                n = len(s.completion_ids)
                fixed = tuple(float(x) if m else 0.0 for x, m in zip(logp[row, :n].tolist(), s.loss_mask, strict=True))
                out.append(replace(s, sampler_logprobs=fixed))
        return tuple(out)

    def _record(
        self,
        tenant: str,
        version: int,
        status: AdapterStatus,
        path: Path | None,
        reason: str,
        metrics: dict[str, float],
        items: Sequence[Feedback],
        consolidated: Sequence[str] = (),
        forgotten: Sequence[str] = (),
    ) -> AdapterRecord:
        # Relative to the adapters folder, so that a store folder can be moved or restored from a copy.
        where = None if path is None else str(path.relative_to(self.folder))
        record = AdapterRecord(tenant, version, status, where, time.time(), reason, metrics)
        self.store.record_adapter(record, [f.id for f in items], consolidated, forgotten)
        return record

    def fail(
        self, tenant: str, items: Sequence[Feedback], reason: str, metrics: dict[str, float] | None = None
    ) -> AdapterRecord:
        """Record a round that raised as rejected and consume its feedback, so one poisonous item
        cannot wedge the learner in a loop (a consolidation that raised: `metrics` says so, and its
        items wait for the next trigger rather than the next poll)."""
        version = self.store.next_version(tenant)
        return self._record(tenant, version, AdapterStatus.REJECTED, None, reason, dict(metrics or {}), items)

    # ---- the tenant's core ------------------------------------------------------------------------
    def bootstrap(self, tenant: str) -> None:
        """Gate the initial adapter as the tenant's pretrained reference and save it as its good
        step 0, unless done already (its first round does this otherwise)."""
        self._core(tenant, self.store.next_version(tenant))

    def _core(self, tenant: str, version: int) -> LearningCore:
        """The tenant's learning core for the round that makes `version`, restored from its newest
        checkpoint; on its first round, the initial adapter gated as the pretrained reference and
        saved as its good step 0."""
        cfg = self.config
        folder = self.folder / tenant
        drift = [p for _, _, p in self._probe_prompts[:: max(1, len(self._probe_prompts) // cfg.guard.drift_prompts)]]
        guard = Guard(cfg.guard, folder, drift, seed=cfg.seed)
        learner = GRPOLearner(self.policy, cfg.grpo)
        nll = SFTConfig(
            cfg.distill.learning_rate, anchor_coef=cfg.distill.anchor_coef, warmup_steps=cfg.distill.warmup_steps
        )
        lessons: LessonLearner = (
            CorrectionNLL(self.policy, learner.optimizer, nll)
            if cfg.correction_rule == CorrectionRule.NLL
            else SelfDistiller(self.policy, learner.optimizer, cfg.distill, torch.Generator().manual_seed(cfg.seed))
        )
        ring = CheckpointRing(folder, keep=cfg.checkpoints_kept)
        # A crash after a round's checkpoint but before its record leaves a checkpoint the store
        # does not know; the round is redone from the feedback, so drop what it wrote.
        ring.discard_after(version - 1)
        core = LearningCore(self.policy, learner, guard, ring, lessons, keep_good_adapters=True,
                            log=MetricsLog(folder / "metrics.jsonl"))  # fmt: skip
        if core.restore() is None:
            folder.mkdir(parents=True, exist_ok=True)
            load_adapter(self.policy, self.initial)
            with part("probes"):
                scores, likelihoods, changed = self.evaluate(tenant)
            core.gate(0, scores, [], likelihoods=likelihoods, changed=changed)
            core.mark_good(scores, likelihoods)
            core.checkpoint(0, good=True)
        return core

    # ---- what the gate measures -------------------------------------------------------------------
    def evaluate(self, tenant: str) -> tuple[dict[str, float], dict[str, float], ChangedAnswers]:
        """Greedy success on the general-ability probes (plain chat); the likelihood of each probe
        group's answers: the pretrained model's general replies, the tenant's held-out corrections
        and the operator's probes; and how many general prompts' greedy answers (first words) differ
        from the pretrained model's."""
        prompts = [p for _, _, p in self._probe_prompts]
        replies = self.policy.chat(prompts, self.greedy)
        # The probes' replies are reused below: the extra cost of the changed and lost answers is
        # one greedy batch of the shot prompts (64 at the defaults) of `answer_tokens` per gate.
        shot = self.policy.chat(self._shot_prompts, self.greedy) if self._shot_prompts else []
        answers = [r.answer for r in [*replies, *shot]]
        right = self._right(answers)
        solved: dict[str, list[float]] = {}
        for (task, _, _), ok in zip(self._probe_prompts, right[: len(self._probe_prompts)], strict=True):
            solved.setdefault(task.label, []).append(float(ok))
        scores = {label: sum(v) / len(v) for label, v in solved.items()}
        groups = {
            GENERAL_ANSWERS: self._general_samples(),
            "holdout": self._holdout_samples(tenant),
            "operator": self._operator_samples(tenant),
        }
        likelihoods = {name: reply_likelihood(self.policy, samples) for name, samples in groups.items() if samples}
        # The mean likelihood above moved 0.01 nats while 1-2 of 40 unrelated answers changed (issue
        # 18); counting changed answers sees that.
        pretrained = self._pretrained_replies()
        now = [first_word(a) for a in answers]
        changed = ChangedAnswers.between(pretrained.first_words, now, right_before=pretrained.right, right_now=right)
        return scores, likelihoods, changed

    def _right(self, answers: Sequence[str]) -> list[bool]:
        """Whether each general prompt's answer (the probes, then the shot prompts) solves its item."""
        envs: dict[Task, Env] = {}
        right = []
        for (task, seed), answer in zip(self._general_items, answers, strict=True):
            env = envs.setdefault(task, task.make())
            env.reset(seed=seed)
            right.append(env.step(answer).reward >= env.success_threshold)
        return right

    def _general_samples(self) -> list[Sample]:
        """The pretrained model's greedy replies to every probe, asked alone and after `shots`
        answered turns of the next probes of its task; built once. Their likelihood falls when an
        adapter moves general behaviour, its format included (one word becoming a sentence), even
        where the probes' greedy scores, which accept a short phrase, do not move."""
        return list(self._pretrained_replies().samples)

    def _pretrained_replies(self) -> PretrainedReplies:
        """The pretrained model asked the probes and the shot prompts once, in the same two batches
        `evaluate` asks the adapter in: batch composition shifts a padded forward pass slightly, and
        a near-tie decided otherwise must not count as a changed answer."""
        if self._pretrained is None:
            prompts = [p for _, _, p in self._probe_prompts]
            with self.policy.pretrained():
                replies = self.policy.chat(prompts, self.greedy)
                if self._shot_prompts:
                    replies += self.policy.chat(self._shot_prompts, self.greedy)
            prompts += self._shot_prompts
            samples = [reply_sample(self.policy, p, r.answer) for p, r in zip(prompts, replies, strict=True)]
            self._pretrained = PretrainedReplies(
                tuple(s for s in samples if s.completion_ids),
                tuple(first_word(r.answer) for r in replies),
                tuple(self._right([r.answer for r in replies])),
            )
        return self._pretrained

    def _holdout_samples(self, tenant: str) -> list[Sample]:
        samples = []
        for f in self.store.holdout_feedback(tenant):
            req = self.store.request(f.request_id)
            if req is not None and req.tenant == tenant and f.correction:
                samples.append(reply_sample(self.policy, self.prompt(req), f.correction))
        return samples

    def _operator_samples(self, tenant: str) -> list[Sample]:
        mine = [p for p in self.operator_probes if p.tenant in (None, tenant)]
        return [reply_sample(self.policy, self.policy.chat_start(p.prompt), p.answer) for p in mine]

    def prompt(self, req: ServedRequest, correction: str | None = None) -> list[int]:
        """The request's conversation as the person wrote it (`loop/feedback.PromptFn`): without the
        notes the server recalled for its answer, and, given a correction (the teacher's context),
        with its last question asked once before and answered with the correction. The teacher
        used to read the correction as a quoted system note first in the conversation, which also
        displaced the chat template's default system prompt: it answered in sentences ("The capital
        of Ireland is Dublin.") where the conversation asked for a word, and the student learned
        that style for questions nobody corrected (dev/LOG.md, stop 20)."""
        messages = list(req.body.get("messages", []))
        if correction is not None:
            messages = with_exchange(messages, correction)
        return self.policy.chat_ids(messages, protocol=bool(req.generation.get("protocol", False)))


__all__ = [
    "CorrectionRule",
    "OperatorProbe",
    "TenantLearner",
    "TenantLearningConfig",
    "ensure_initial_adapter",
    "load_operator_probes",
]
