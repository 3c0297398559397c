"""On-policy self-distillation: the model with a lesson in its context teaches itself without it.

After a failure, the agent retries with a lesson (feedback, a correction, a past success) in its
context and succeeds. That success lives only in the context; this update moves it into the weights.
The teacher is the policy *with* the lesson, the student the same policy *without* it (one set of
weights; the teacher side runs under no_grad). On completions the student sampled itself (on-policy)
plus the teacher's successful retry, the loss is the per-token reverse KL(student || teacher) over
the whole vocabulary, so mass moves to what the teacher prefers even where the student never sampled
it (GKD, Agarwal et al. 2024; "on-policy distillation", Thinking Machines 2025).

Only answer tokens are targets: the chain of thought is never a distillation target.
Replay: `Lesson`s (types.py) built from earlier successes (teacher prompt = student prompt) keep the
student where it already is on them, so consolidating a new item does not overwrite old ones.
Unlearning: a lesson whose teacher is `LessonTeacher.PRETRAINED` is scored by the base model (the
adapters off) on the bare question, so the student's own answers move back to what the base model
says there: a deleted memory item's absence is trained, not just its recall stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch

from lifelong.errors import ConfigError
from lifelong.learn.logprobs import (
    PretrainedLogSoftmax,
    hold_to_pretrained,
    micro_batches,
    own_log_softmax,
    own_rows,
    reverse_kl,
)
from lifelong.learn.optim import clipped_step, set_learning_rate
from lifelong.model.adapters import AdapterSnapshot
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Completion, Lesson, LessonTeacher, Sample, UpdateReport


@dataclass(frozen=True)
class DistillConfig:
    learning_rate: float = 2e-4
    student_samples: int = 4  # on-policy samples per lesson per step
    max_grad_norm: float = 1.0
    answer_tokens: int = 12
    # Weight of KL(student || reference) beside KL(student || teacher); the reference is the
    # pretrained model unless `update` is given an earlier version of the adapters. The lesson in the
    # teacher's context also colours *how* it answers (a note ending "...was 35." teaches "35." and a
    # newline instead of ending the turn); without this anchor, many lessons in a row drift the
    # answer format until nothing parses. The optimum is a geometric mix of teacher and reference
    # (their geometric mean at 1.0): where the teacher is sure (the corrected answer) it wins,
    # elsewhere the format is kept. Measured in dev/LOG.md (2026-11-24).
    reference_kl: float = 1.0
    # Weight of KL(policy || pretrained) on general-ability anchor items given to `update` (none in
    # a run's consolidation; a server passes its anchor pool's, loop/anchors.py). The reference
    # term above holds only the lesson's own prompt; without this, corrections carry their style
    # (a sentence where a word was asked) to questions nobody corrected (dev/LOG.md, 2026-11-30).
    anchor_coef: float = 1.0
    warmup_steps: int = 0  # optimizer steps over which the rate rises to its value (learn/optim.py)
    micro_batch: int = 16  # rows per forward/backward; bounds memory
    # Weight of the NLL of a lesson's given replies (a person's corrected answer: `Lesson.successes`)
    # on the student's prompt, beside the KL terms, as a mean over their tokens. 0: the given reply
    # is only one more completion the teacher scores. A small teacher reads a quoted correction
    # about half the time (dev/LOG.md, stop 28), and the geometric mix with the reference halves
    # what it is sure of again, so distillation alone wrote no closed-book answer; the NLL writes
    # the answer the person gave.
    given_nll: float = 0.0
    # The teacher read against the reference, as recall is read at answer time
    # (model/sampler.Contrast): the target is softmax((1 + c) x teacher - c x reference), the
    # reference scoring the student's prompt. A small teacher quoting a note still leans to what it
    # believed before (first words right 0.40 plain, 0.83 contrasted, dev/LOG.md stop 31); the
    # contrast keeps what the note adds. With c = `reference_kl` the two KL terms' optimum is the
    # teacher itself, where without it is the teacher's geometric mean with the reference.
    teacher_contrast: float = 0.0
    # The teacher scored by the reference's weights (those `reference_kl` holds to), not the live
    # ones being trained. Where the lesson's whole content is in the teacher's context (a memory
    # item), the live teacher shares every weight the step moves: at 135M its reading of a quoted
    # fact fell as the student learned (contrasted first-token probability 0.61 -> 0.39 in 8 steps
    # of the memory unit; with LoRA to 0.006; dev/LOG.md stop 32). A fixed teacher is a fixed target.
    frozen_teacher: bool = False

    def __post_init__(self) -> None:
        if (
            self.learning_rate <= 0
            or self.micro_batch < 1
            or min(
                self.student_samples,
                self.reference_kl,
                self.anchor_coef,
                self.warmup_steps,
                self.given_nll,
                self.teacher_contrast,
            )
            < 0
        ):
            raise ConfigError(
                "learning_rate must be > 0, micro_batch >= 1, student_samples, reference_kl, anchor_coef,"
                " warmup_steps, given_nll and teacher_contrast >= 0",
                "defaults: 2e-4, 16, 4, 1.0, 1.0, 0, 0 and 0",
            )


class Pair(NamedTuple):
    """One distilled completion: after the student's prompt, after the teacher's, which teacher
    scores it, and whether it is a lesson's given reply (a `given_nll` target) rather than sampled."""

    student: Sample
    teacher_sample: Sample
    teacher: LessonTeacher
    given: bool


class SelfDistiller:
    """Consolidates lessons into the adapters (a `LessonLearner`, learn/learner.py). Shares the
    optimizer with the RL learner, so the adapters have one optimizer state and one checkpoint.
    The student's on-policy samples are drawn from `generator` (the run's own, restored on resume)."""

    def __init__(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        config: DistillConfig = DistillConfig(),
        generator: torch.Generator | None = None,
    ) -> None:
        self.policy = policy
        self.optimizer = optimizer
        self.config = config
        self.generator = generator
        self.step = 0
        self.pretrained = PretrainedLogSoftmax()  # the anchor's reference side, kept between steps

    def update(
        self,
        lessons: Sequence[Lesson],
        lr_scale: float = 1.0,
        reference: AdapterSnapshot | None = None,
        anchors: Sequence[Sample] = (),
    ) -> UpdateReport:
        """One distillation step at `lr_scale` x the configured rate. The format anchor
        (`reference_kl`) holds the student to `reference`, an earlier version of the adapters, or by
        default to the pretrained model; `anchors` (general-ability items) are held to the
        pretrained model with weight `anchor_coef`."""
        if not lessons:
            return UpdateReport(self.step, False, {}, reason="no lessons")
        cfg, model = self.config, self.policy.model
        pairs: list[Pair] = []
        for lesson, sampled in zip(lessons, self._student_samples(lessons), strict=True):
            given = [False] * len(sampled) + [lesson.teacher == LessonTeacher.POLICY] * len(lesson.successes)
            for c, is_given in zip([*sampled, *lesson.successes], given, strict=True):
                answer_mask = self.policy.answer_mask(c)
                if sum(answer_mask) == 0:
                    continue
                pairs.append(
                    Pair(
                        Sample(lesson.student_prompt, c.token_ids, c.logprobs, answer_mask, 0.0),
                        Sample(lesson.teacher_prompt, c.token_ids, c.logprobs, answer_mask, 0.0),
                        lesson.teacher,
                        is_given,
                    )
                )
        if not pairs:
            return UpdateReport(self.step, False, {}, reason="no answer tokens to distil")
        lr = set_learning_rate(self.optimizer, cfg.learning_rate * lr_scale, cfg.warmup_steps)
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # Full-vocabulary log-probs are (rows, tokens, 49k) floats three times over: a round of 32
        # corrections in one forward held ~10 GB (dev/LOG.md, stop 20). Micro-batches accumulate
        # the same gradient, each part divided by the whole step's tokens.
        tokens = float(sum(sum(p.student.loss_mask) for p in pairs))
        given_tokens = float(sum(sum(p.student.loss_mask) for p in pairs if p.given))
        kl = anchored = nll = 0.0
        general: dict[str, float] = {}
        with self.policy.learning():
            for rows in micro_batches([p.student for p in pairs], cfg.micro_batch):
                part = self._accumulate(pairs[rows], reference, tokens, given_tokens)
                kl, anchored, nll = kl + part[0], anchored + part[1], nll + part[2]
            if anchors and cfg.anchor_coef > 0:
                general = {
                    "anchor/kl": hold_to_pretrained(self.policy, anchors, cfg.anchor_coef, pretrained=self.pretrained)
                }
        grad_norm = clipped_step(self.optimizer, cfg.max_grad_norm, memories=self.policy.memories)
        applied = math.isfinite(grad_norm)
        self.step += int(applied)
        self.optimizer.zero_grad(set_to_none=True)
        model.eval()
        return UpdateReport(
            self.step,
            applied,
            {
                "distill/kl": kl,
                "distill/reference_kl": anchored,
                **({"distill/given_nll": nll} if cfg.given_nll > 0 and given_tokens else {}),
                "distill/tokens": float(tokens),
                "distill/sequences": float(len(pairs)),
                "grad/norm": grad_norm,
                "optim/lr": lr,
                **general,
            },
            reason="" if applied else "non-finite gradient",
        )

    def _accumulate(
        self, pairs: Sequence[Pair], reference: AdapterSnapshot | None, tokens: float, given_tokens: float
    ) -> tuple[float, float, float]:
        """Forward/backward one micro-batch of rows; returns its parts of the step's KL to the
        teacher, KL to the reference and NLL of the given replies."""
        model, pad = self.policy.model, self.policy.pad_id
        students = [p.student for p in pairs]
        student_logp, mask = own_log_softmax(model, students, pad)  # (N, V), (N,): each reply token's row
        unlearn = [i for i, p in enumerate(pairs) if p.teacher == LessonTeacher.PRETRAINED]

        def reference_weights() -> AbstractContextManager[None]:
            return self.policy.pretrained() if reference is None else reference.loaded(self.policy)

        with torch.no_grad():
            # One forward per kind of teacher (the policy, live or as the reference; the base model,
            # adapters off). A teacher sample is its student's reply after another prompt: the same rows.
            teacher_logp = torch.zeros_like(student_logp)
            for base in (False, True):
                rows = [i for i, p in enumerate(pairs) if (p.teacher == LessonTeacher.PRETRAINED) == base]
                if rows:
                    weights: AbstractContextManager[None]
                    if base:
                        weights = self.policy.pretrained()
                    elif self.config.frozen_teacher:
                        weights = reference_weights()
                    else:
                        weights = nullcontext()
                    with weights:
                        teachers = [pairs[i].teacher_sample for i in rows]
                        logp, _ = own_log_softmax(self.policy.model, teachers, pad)
                    teacher_logp[own_rows(students, rows)] = logp
            with reference_weights():
                reference_logp, _ = own_log_softmax(self.policy.model, students, pad)
            # Unlearning is held to the base model, not to `reference`: the earlier adapters still
            # know the deleted item, and a geometric mix with them would keep half of it. The base
            # model on the bare question has no lesson to colour its format, so nothing is lost.
            if unlearn:
                held = own_rows(students, unlearn)
                reference_logp[held] = teacher_logp[held]
            if (c := self.config.teacher_contrast) > 0:  # (a no-op on unlearning rows: teacher = reference)
                teacher_logp = torch.log_softmax((1 + c) * teacher_logp - c * reference_logp, dim=-1)
        kl = reverse_kl(student_logp, teacher_logp, mask, tokens)
        anchored = reverse_kl(student_logp, reference_logp, mask, tokens)
        loss = kl + self.config.reference_kl * anchored
        nll = torch.zeros(())
        if self.config.given_nll > 0 and given_tokens:
            given = torch.zeros_like(mask)
            given[own_rows(students, [i for i, p in enumerate(pairs) if p.given])] = 1.0
            ids = torch.tensor([t for s in students for t in s.completion_ids])
            token_logp = student_logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            nll = -(token_logp * given * mask).sum() / given_tokens
            loss = loss + self.config.given_nll * nll
        loss.backward()
        return float(kl.detach()), float(anchored.detach()), float(nll.detach())

    def _student_samples(self, lessons: Sequence[Lesson]) -> list[list[Completion]]:
        """`student_samples` on-policy replies per lesson, each in its lesson's format (reasoning
        protocol or plain chat), drawn in lesson order within each format."""
        cfg, k = self.config, self.config.student_samples
        out: list[list[Completion]] = [[] for _ in lessons]
        for protocol in dict.fromkeys(lesson.protocol for lesson in lessons):
            rows = [i for i, lesson in enumerate(lessons) if lesson.protocol == protocol]
            if k == 0:
                continue
            gen = GenerationConfig(thinking_tokens=0, answer_tokens=cfg.answer_tokens, protocol=protocol)
            contexts = [lessons[i].student_prompt for i in rows for _ in range(k)]
            sampled = self.policy.respond(contexts, gen, self.generator)
            for j, i in enumerate(rows):
                out[i] = sampled[j * k : (j + 1) * k]
        return out


__all__ = ["DistillConfig", "Lesson", "LessonTeacher", "SelfDistiller"]
