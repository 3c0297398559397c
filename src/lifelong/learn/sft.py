"""Naive sequential fine-tuning on successful episodes: the `sft` baseline.

Maximise the log-likelihood of the completions that earned full reward (rejection-sampling
fine-tuning on the agent's own successes), with the same adapters, optimizer and learning rate as
the RL learner. No group baseline, no ratio, no KL: this is what continual learners are compared
against, because fine-tuning on fixed targets is known to move the model further from its own
distribution (and forget more) than on-policy RL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from lifelong.learn.grpo import GRPOConfig
from lifelong.learn.logprobs import completion_logprobs
from lifelong.learn.optim import clipped_step, set_learning_rate
from lifelong.model.policy import Policy
from lifelong.types import Batch, Episode, Sample, UpdateReport


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
    rewards = [ep.reward for ep in eps]
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) if rewards else 0.0
    return Batch(samples, len(eps), 0, mean, std)


class SFTLearner:
    def __init__(self, policy: Policy, config: GRPOConfig = GRPOConfig()) -> None:
        self.policy = policy
        self.config = config
        params = [p for p in policy.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.step = 0
        self.lr_scale = 1.0
        self.refuse_nonfinite = True

    def update(self, batch: Batch) -> UpdateReport:
        base = {"reward/mean": batch.reward_mean, "reward/std": batch.reward_std}
        if not batch.samples:
            return UpdateReport(self.step, False, base, reason="no successful episode to imitate")
        cfg, model = self.config, self.policy.model
        set_learning_rate(self.optimizer, cfg.learning_rate * self.lr_scale)
        total = sum(sum(s.loss_mask) for s in batch.samples)
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nll = 0.0
        for i in range(0, len(batch.samples), cfg.micro_batch):
            logp, _, mask = completion_logprobs(model, batch.samples[i : i + cfg.micro_batch], self.policy.pad_id)
            loss = -(logp * mask).sum() / total
            loss.backward()
            nll += float(loss)
        grad_norm = clipped_step(self.optimizer, cfg.max_grad_norm, self.refuse_nonfinite)
        if self.refuse_nonfinite and not math.isfinite(grad_norm):
            model.eval()
            return UpdateReport(self.step, False, {**base, "grad/norm": grad_norm}, reason="non-finite gradient")
        model.eval()
        self.step += 1
        self.policy.version += 1
        metrics = {**base, "loss/nll": nll, "grad/norm": grad_norm, "batch/samples": float(len(batch.samples))}
        return UpdateReport(self.step, True, metrics)
