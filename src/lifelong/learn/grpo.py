"""Group-relative policy gradient (GRPO family) on LoRA adapters.

The whole update in one place, top to bottom:
  1. episodes sampled for the same item form a group; advantage = reward minus the group mean,
     optionally divided by the group std (GRPO, DeepSeekMath); groups whose rewards are all equal
     carry no signal and are dropped (DAPO "dynamic sampling") instead of giving a silent "loss 0";
  2. ratio = pi_theta / pi_sampler per token, against the sampler's own log-probs, so any
     sampler/learner mismatch is corrected rather than ignored;
  3. clipped surrogate with separate lower/upper clip ("clip-higher", DAPO) to keep entropy alive;
  4. token-mean aggregation over the whole batch (no length bias, DAPO / Dr. GRPO);
  5. a small k3 KL penalty to the reference policy = the same model with adapters disabled
     (Schulman's estimator), so no second copy of the model sits in memory;
  6. optionally an anchor: KL(policy || pretrained model) over the whole vocabulary on *anchor*
     samples, prompts of skills the run must keep but never trains (general ability), answered by
     the pretrained model itself. The k3 term above only sees the task being learned; this one
     holds the rest of the distribution in place inside the same update (Learning without
     Forgetting, Li & Hoiem 2016, with the pretrained model as the old network);
  7. optionally an auxiliary likelihood term on the batch's `auxiliary` targets: the games' real
     replies to the agent's moves, so the policy also learns how its world responds (implicit
     world modelling, "Early Experience", 2025). Weight `auxiliary_coef`, token mean.
Reasoning tokens are optimised only through the outcome reward: no loss term ever targets them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from lifelong.errors import ConfigError
from lifelong.learn.logprobs import PretrainedLogSoftmax, completion_logprobs, hold_to_pretrained, micro_batches
from lifelong.learn.optim import clipped_step, make_optimizer, set_learning_rate
from lifelong.model.adapters import trainable
from lifelong.model.policy import Policy
from lifelong.types import Batch, Episode, Sample, UpdateReport


@dataclass(frozen=True)
class GRPOConfig:
    """Defaults tuned for LoRA (rank 16) on SmolLM2-135M on CPU."""

    learning_rate: float = 2e-4  # LoRA wants ~10x a full fine-tune's rate
    group_size: int = 8
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.02
    scale_rewards: bool = True  # divide advantages by the group std (GRPO); False = Dr. GRPO
    epochs: int = 1  # passes over each batch; >1 makes the clip matter
    # A micro-batch (one forward/backward) holds at most `micro_batch` samples and, when it is
    # more than 0, `micro_batch_tokens` prompt and completion tokens: memory goes with tokens.
    micro_batch: int = 32
    micro_batch_tokens: int = 2048
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    temperature: float = 1.0  # must match the sampler's
    anchor_coef: float = 1.0  # weight of the anchor KL (point 6 above); 0 = no anchor
    warmup_steps: int = 0  # optimizer steps over which the rate rises to its value (learn/optim.py)
    auxiliary_coef: float = 0.1  # weight of the auxiliary likelihood (point 7), when a batch has targets
    # Each turn of a game credited with what was earned from it on (`make_batch`); for games that
    # pay progress move by move (`turn_credit`), where it is what makes those rewards teach.
    turn_advantages: bool = False

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}", "try 2e-4 for LoRA")
        if self.auxiliary_coef < 0:
            raise ConfigError("auxiliary_coef must be >= 0", "use 0 to switch the auxiliary term off")
        if self.group_size < 2:
            raise ConfigError(
                f"group_size must be >= 2, got {self.group_size}", "group-relative advantages need 2+ samples per item"
            )
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ConfigError("clip_low must be in [0, 1) and clip_high >= 0", "the defaults are 0.2 and 0.28")
        if self.kl_coef < 0 or self.anchor_coef < 0:
            raise ConfigError("kl_coef and anchor_coef must be >= 0", "use 0 to switch a KL term off")
        if self.epochs < 1 or self.micro_batch < 1 or self.micro_batch_tokens < 0:
            raise ConfigError(
                "epochs and micro_batch must be >= 1 and micro_batch_tokens >= 0", "the defaults are 1, 32 and 2048"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}", "0 (the default) switches it off")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def make_batch(
    episodes: Iterable[Episode],
    scale_rewards: bool = True,
    anchors: Sequence[Sample] = (),
    turn_advantages: bool = False,
) -> Batch:
    """Group episodes by `group`, compute advantages, drop groups with no reward spread; `anchors`
    (point 6 of the module docstring) travel with the batch.

    Every turn of a multi-turn episode shares the episode's advantage, unless `turn_advantages`:
    then turn t's advantage compares what was earned from turn t on across the group's episodes
    that reached turn t (turn 0 is the episode's own advantage). With a game that pays progress as
    it is made (turn credit) a move is then credited with what followed it, not with what came before."""
    groups: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        groups[ep.group or ep.id].append(ep)
    samples: list[Sample] = []
    rewards = [ep.reward for eps in groups.values() for ep in eps]
    dropped = 0
    for eps in groups.values():
        if turn_advantages:
            advantages = _per_turn([_returns_to_go(ep) for ep in eps], scale_rewards)
        else:
            advantages = [
                [a] * len(ep.turns)
                for ep, a in zip(eps, _relative([ep.reward for ep in eps], scale_rewards), strict=True)
            ]
        if not any(any(row) for row in advantages):
            dropped += 1
            continue
        for ep, row in zip(eps, advantages, strict=True):
            for turn, a in zip(ep.turns, row, strict=True):
                c = turn.completion
                if sum(c.loss_mask) == 0:
                    continue
                samples.append(Sample(turn.prompt_ids, c.token_ids, c.logprobs, c.loss_mask, float(a)))
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards)) if rewards else 0.0
    return Batch(tuple(samples), len(groups), dropped, mean, std, tuple(anchors))


def _relative(values: Sequence[float], scale: bool) -> list[float]:
    """Each value minus the values' mean, over their std when `scale`; all 0 when they do not differ."""
    r = torch.tensor(values, dtype=torch.float64)
    std = float(r.std(unbiased=False)) if len(values) > 1 else 0.0
    if std < 1e-6:
        return [0.0] * len(values)
    return ((r - r.mean()) / (std + 1e-6 if scale else 1.0)).tolist()


def _returns_to_go(episode: Episode) -> list[float]:
    """What the episode earned from each turn on."""
    returns, total = [], 0.0
    for turn in reversed(episode.turns):
        total += turn.reward
        returns.append(total)
    return returns[::-1]


def _per_turn(returns: Sequence[Sequence[float]], scale: bool) -> list[list[float]]:
    """Advantages turn index by turn index: each turn against the same turn of the episodes that
    reached it (a turn no other episode reached has no comparison and gets 0)."""
    advantages = [[0.0] * len(row) for row in returns]
    for t in range(max((len(row) for row in returns), default=0)):
        reached = [i for i, row in enumerate(returns) if len(row) > t]
        for i, a in zip(reached, _relative([returns[i][t] for i in reached], scale), strict=True):
            advantages[i][t] = a
    return advantages


class GRPOLearner:
    """Turns a Batch into one update of the policy's adapters."""

    def __init__(self, policy: Policy, config: GRPOConfig = GRPOConfig(), refuse_nonfinite: bool = True) -> None:
        self.policy = policy
        self.config = config
        # The guard's cheapest check: skip a step whose gradient is NaN/Inf. Off only in the
        # unguarded baselines, to show what it prevents.
        self.refuse_nonfinite = refuse_nonfinite
        if not trainable(policy):
            raise ConfigError("the policy has no trainable parameters", "create the Policy with a learning unit")
        self.optimizer = make_optimizer(policy, config.learning_rate, config.weight_decay)
        self.step = 0
        self.pretrained = PretrainedLogSoftmax()  # the anchor's reference side, kept between steps

    def batch(self, episodes: Sequence[Episode], anchors: Sequence[Sample] = ()) -> Batch:
        return make_batch(episodes, self.config.scale_rewards, anchors, self.config.turn_advantages)

    def update(self, batch: Batch, lr_scale: float = 1.0) -> UpdateReport:
        """One optimizer step on the batch at `lr_scale` x the configured rate; the batch's anchors
        (answer tokens masked in) are held to the pretrained model with weight `anchor_coef`."""
        cfg, model = self.config, self.policy.model
        anchors = batch.anchors if cfg.anchor_coef > 0 else ()
        auxiliary = batch.auxiliary if cfg.auxiliary_coef > 0 else ()
        base = {
            "reward/mean": batch.reward_mean,
            "reward/std": batch.reward_std,
            "batch/groups": float(batch.num_groups),
            "batch/zero_variance_frac": batch.num_dropped_groups / max(batch.num_groups, 1),
        }
        if not batch.samples and not auxiliary:  # the auxiliary targets alone still teach
            return UpdateReport(self.step, False, base, reason="no group had reward spread")
        total_tokens = sum(sum(s.loss_mask) for s in batch.samples)
        lr = set_learning_rate(self.optimizer, cfg.learning_rate * lr_scale, cfg.warmup_steps)
        model.train()
        sums: dict[str, float] = defaultdict(float)
        grad_norm = 0.0
        reference = self._reference_logprobs(batch.samples) if cfg.kl_coef > 0 and batch.samples else None
        for _ in range(cfg.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            with self.policy.learning():
                for rows in micro_batches(batch.samples, cfg.micro_batch, cfg.micro_batch_tokens):
                    ref_logp = reference[rows] if reference is not None else None
                    for k, v in self._accumulate(list(batch.samples[rows]), total_tokens, ref_logp).items():
                        sums[k] += v
                if anchors:
                    sums["anchor/kl"] += hold_to_pretrained(
                        self.policy, anchors, cfg.anchor_coef, cfg.temperature, self.pretrained
                    )
                if auxiliary:
                    sums["auxiliary/nll"] += self._auxiliary(auxiliary)
            grad_norm = clipped_step(self.optimizer, cfg.max_grad_norm, self.refuse_nonfinite, self.policy.memories)
            if self.refuse_nonfinite and not math.isfinite(grad_norm):
                model.eval()
                return UpdateReport(self.step, False, {**base, "grad/norm": grad_norm}, reason="non-finite gradient")
        model.eval()
        self.step += 1
        denom = max(total_tokens, 1) * cfg.epochs
        metrics = {
            **base,
            "loss/policy": sums["loss/policy"] / denom,
            "loss/kl": sums["loss/kl"] / denom,
            "kl/ref": sums["kl/ref"] / denom,
            "policy/entropy": sums["policy/entropy"] / denom,
            "policy/clip_frac": sums["policy/clip_frac"] / denom,
            "policy/sampler_mismatch": sums["policy/sampler_mismatch"] / denom,
            **({"anchor/kl": sums["anchor/kl"] / cfg.epochs} if anchors else {}),
            **({"auxiliary/nll": sums["auxiliary/nll"] / cfg.epochs} if auxiliary else {}),
            "grad/norm": grad_norm,
            "optim/lr": lr,
            "batch/samples": float(len(batch.samples)),
            "batch/tokens": float(total_tokens),
        }
        return UpdateReport(self.step, True, metrics)

    def _auxiliary(self, targets: Sequence[Sample]) -> float:
        """Backward `auxiliary_coef` x the token-mean NLL of the auxiliary targets; returns the NLL."""
        total = sum(sum(s.loss_mask) for s in targets)
        nll = 0.0
        for rows in micro_batches(targets, self.config.micro_batch, self.config.micro_batch_tokens):
            logp, _, mask = completion_logprobs(self.policy.model, list(targets[rows]), self.policy.pad_id)
            loss = -(logp * mask).sum() / total
            (self.config.auxiliary_coef * loss).backward()
            nll += float(loss.detach())
        return nll

    def _reference_logprobs(self, samples: Sequence[Sample]) -> torch.Tensor:
        """(N, C) log-probs of every sample's completion under the reference (the adapters off), for
        the k3 term: once a batch, not once an epoch, and in chunks twice a micro-batch, since a
        forward without gradients keeps no activations (fewer, fuller forwards: dev/LOG.md, stop 30)."""
        cfg = self.config
        width = max(len(s.completion_ids) for s in samples)
        out = torch.zeros(len(samples), width)
        with torch.no_grad(), self.policy.learning(), self.policy.pretrained():
            for rows in micro_batches(samples, 2 * cfg.micro_batch, 2 * cfg.micro_batch_tokens):
                logp, _, _ = completion_logprobs(
                    self.policy.model, samples[rows], self.policy.pad_id, cfg.temperature, with_entropy=False
                )
                out[rows, : logp.shape[1]] = logp
        return out

    def _accumulate(self, chunk: list[Sample], total_tokens: int, ref_logp: torch.Tensor | None) -> dict[str, float]:
        """Forward/backward one micro-batch against its reference log-probs (None: no k3 term);
        returns token-summed metrics."""
        cfg, model, pad = self.config, self.policy.model, self.policy.pad_id
        logp, entropy, mask = completion_logprobs(model, chunk, pad, cfg.temperature)  # (B, C)
        old = torch.zeros_like(logp)
        for i, s in enumerate(chunk):
            old[i, : len(s.sampler_logprobs)] = torch.tensor(s.sampler_logprobs)
        adv = torch.tensor([s.advantage for s in chunk], dtype=torch.float32).unsqueeze(-1)  # (B, 1)
        log_ratio = (logp - old) * mask
        ratio = torch.exp(log_ratio)
        clipped = torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high)
        policy_loss = -torch.minimum(ratio * adv, clipped * adv)  # (B, C)
        kl = torch.zeros_like(logp)
        if ref_logp is not None:
            delta = (ref_logp[:, : logp.shape[1]] - logp) * mask
            kl = torch.exp(delta) - delta - 1  # k3 estimator, >= 0
        loss = ((policy_loss + cfg.kl_coef * kl) * mask).sum() / total_tokens
        loss.backward()
        with torch.no_grad():
            was_clipped = ((ratio - clipped).abs() > 1e-6).float()
            return {
                "loss/policy": float((policy_loss * mask).sum()),
                "loss/kl": float((cfg.kl_coef * kl * mask).sum()),
                "kl/ref": float((kl * mask).sum()),
                "policy/entropy": float((entropy * mask).sum()),
                "policy/clip_frac": float((was_clipped * mask).sum()),
                "policy/sampler_mismatch": float((log_ratio.abs() * mask).sum()),
            }
