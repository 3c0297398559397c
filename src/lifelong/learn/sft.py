"""Naive sequential fine-tuning on successful episodes: the `sft` baseline.

Maximise the log-likelihood of the completions that earned full reward (rejection-sampling
fine-tuning on the agent's own successes), with the same adapters and optimizer as the RL learner.
No group baseline, no ratio, no KL: this is what continual learners are compared against, because
fine-tuning on fixed targets is known to move the model further from its own distribution (and
forget more) than on-policy RL. `CorrectionNLL` is the same loss on people's corrections.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch

from lifelong.errors import ConfigError
from lifelong.learn.learner import reward_batch
from lifelong.learn.logprobs import PretrainedLogSoftmax, completion_logprobs, hold_to_pretrained
from lifelong.learn.optim import clipped_step, make_optimizer, set_learning_rate
from lifelong.model.adapters import AdapterSnapshot
from lifelong.model.policy import Policy
from lifelong.types import Batch, Episode, Lesson, LessonTeacher, Sample, UpdateReport


@dataclass(frozen=True)
class SFTConfig:
    """Defaults equal the GRPO learner's, so the two baselines differ only in their loss."""

    learning_rate: float = 2e-4
    micro_batch: int = 16  # samples per forward/backward; bounds memory
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # Weight of KL(policy || pretrained) on a batch's anchor items. 0 for the `sft` baseline (naive
    # fine-tuning holds nothing); a server's corrections (`CorrectionNLL`) hold its anchor pool.
    anchor_coef: float = 0.0
    warmup_steps: int = 0  # optimizer steps over which the rate rises to its value (learn/optim.py)

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}", "try 2e-4 for LoRA")
        if self.anchor_coef < 0 or self.warmup_steps < 0:
            raise ConfigError("anchor_coef and warmup_steps must be >= 0", "0 (the default) switches either off")
        if self.micro_batch < 1:
            raise ConfigError("micro_batch must be >= 1", "the default is 16")


def make_sft_batch(episodes: Iterable[Episode]) -> Batch:
    """Every turn of every successful episode, as a target."""
    eps = list(episodes)
    samples = tuple(
        Sample(t.prompt_ids, t.completion.token_ids, t.completion.logprobs, t.completion.loss_mask, 1.0)
        for ep in eps
        if ep.success
        for t in ep.turns
        if sum(t.completion.loss_mask)
    )
    return reward_batch(eps, samples)


class SFTLearner:
    """Turns the successes of a batch into one update of the policy's adapters."""

    def __init__(
        self,
        policy: Policy,
        config: SFTConfig = SFTConfig(),
        refuse_nonfinite: bool = True,
        optimizer: torch.optim.Optimizer | None = None,  # shared with another learner of the same adapters
    ) -> None:
        self.policy = policy
        self.config = config
        self.refuse_nonfinite = refuse_nonfinite  # see GRPOLearner
        self.optimizer = optimizer or make_optimizer(policy, config.learning_rate, config.weight_decay)
        self.step = 0
        self.pretrained = PretrainedLogSoftmax()  # the anchor's reference side, kept between steps

    def batch(self, episodes: Sequence[Episode], anchors: Sequence[Sample] = ()) -> Batch:
        """The successes as targets; `anchors` ride along (held when `anchor_coef` > 0)."""
        return replace(make_sft_batch(episodes), anchors=tuple(anchors))

    def update(self, batch: Batch, lr_scale: float = 1.0) -> UpdateReport:
        base = {"reward/mean": batch.reward_mean, "reward/std": batch.reward_std}
        if not batch.samples:
            return UpdateReport(self.step, False, base, reason="no successful episode to imitate")
        cfg, model = self.config, self.policy.model
        lr = set_learning_rate(self.optimizer, cfg.learning_rate * lr_scale, cfg.warmup_steps)
        total = sum(sum(s.loss_mask) for s in batch.samples)
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nll = 0.0
        held: dict[str, float] = {}
        with self.policy.learning():
            for i in range(0, len(batch.samples), cfg.micro_batch):
                logp, _, mask = completion_logprobs(model, batch.samples[i : i + cfg.micro_batch], self.policy.pad_id)
                loss = -(logp * mask).sum() / total  # token mean over the whole batch
                loss.backward()
                nll += float(loss.detach())
            if batch.anchors and cfg.anchor_coef > 0:
                held = {
                    "anchor/kl": hold_to_pretrained(
                        self.policy, batch.anchors, cfg.anchor_coef, pretrained=self.pretrained
                    )
                }
        grad_norm = clipped_step(self.optimizer, cfg.max_grad_norm, self.refuse_nonfinite, self.policy.memories)
        model.eval()
        if self.refuse_nonfinite and not math.isfinite(grad_norm):
            return UpdateReport(self.step, False, {**base, "grad/norm": grad_norm}, reason="non-finite gradient")
        self.step += 1
        metrics = {
            **base,
            "loss/nll": nll,
            "grad/norm": grad_norm,
            "optim/lr": lr,
            "batch/samples": float(len(batch.samples)),
            **held,
        }
        return UpdateReport(self.step, True, metrics)


class CorrectionNLL:
    """Plain NLL on corrections, as a `LessonLearner`: each lesson's given replies (a person's
    corrected answer) are the targets after the bare prompt; the teacher's context is not used.
    The baseline that self-distillation (learn/distill.py) is compared against when a model is
    taught by correction: imitation of fixed text, which moves the model off its own distribution.
    A lesson to unlearn (its teacher the pretrained model) has no text to imitate and is skipped:
    NLL cannot train an absence."""

    def __init__(self, policy: Policy, optimizer: torch.optim.Optimizer, config: SFTConfig = SFTConfig()) -> None:
        self.sft = SFTLearner(policy, config, optimizer=optimizer)
        self.optimizer = optimizer

    @property
    def step(self) -> int:
        return self.sft.step

    @step.setter
    def step(self, value: int) -> None:
        self.sft.step = value

    def update(
        self,
        lessons: Sequence[Lesson],
        lr_scale: float = 1.0,
        reference: AdapterSnapshot | None = None,
        anchors: Sequence[Sample] = (),
    ) -> UpdateReport:
        """One NLL step on every lesson's given replies (`reference` is unused: the corrected text is
        the target, not a distribution), holding `anchors` when the config's `anchor_coef` > 0."""
        samples = tuple(
            Sample(lesson.student_prompt, c.token_ids, c.logprobs, c.loss_mask, 1.0)
            for lesson in lessons
            if lesson.teacher == LessonTeacher.POLICY
            for c in lesson.successes
            if sum(c.loss_mask)
        )
        report = self.sft.update(Batch(samples, len(lessons), 0, 1.0, 0.0, tuple(anchors)), lr_scale)
        metrics = {k: v for k, v in report.metrics.items() if not k.startswith("reward/")}
        return UpdateReport(report.step, report.applied, metrics, report.reason)
