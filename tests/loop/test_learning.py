"""The learning core on its own (loop/learning.py): no environment, no stream, just experience in."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.detectors import Finding
from lifelong.guard.gate import Guard, GuardConfig, Verdict
from lifelong.learn.distill import DistillConfig, SelfDistiller
from lifelong.learn.grpo import GRPOConfig, GRPOLearner
from lifelong.loop.learning import LearningCore, MetricsLog
from lifelong.model.adapters import AdapterSnapshot, trainable
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Episode, Lesson, Turn


def _episodes(policy: Policy, seed: int, spread: bool = True) -> list[Episode]:
    """One group of 8 sampled answers; every other one rewarded (or none, without spread)."""
    ctx = policy.start("Pick a token")
    comps = policy.respond(
        [ctx] * 8, GenerationConfig(thinking_tokens=0, answer_tokens=2), torch.Generator().manual_seed(seed)
    )
    rewards = [float(i % 2) if spread else 0.0 for i in range(8)]
    return [
        Episode(f"{seed}-{i}", "t", 0, (Turn(tuple(ctx), c, "q", r),), r, r > 0, {}, policy.version, "g")
        for i, (c, r) in enumerate(zip(comps, rewards, strict=True))
    ]


def _core(policy: Policy, tmp_path: Path, **guard: object) -> LearningCore:
    learner = GRPOLearner(policy, GRPOConfig(learning_rate=1e-3, kl_coef=0.0))
    distiller = SelfDistiller(
        policy, learner.optimizer, DistillConfig(student_samples=2, answer_tokens=2), torch.Generator().manual_seed(0)
    )
    drift_prompts = [policy.start("probe one"), policy.start("probe two")]
    return LearningCore(
        policy,
        learner,
        Guard(GuardConfig(**guard), tmp_path, drift_prompts),  # type: ignore[arg-type]
        CheckpointRing(tmp_path / "checkpoints"),
        distiller,
        keep_good_adapters=True,
        log=MetricsLog(tmp_path / "metrics.jsonl"),
    )


def _start(core: LearningCore) -> None:
    """What a source of experience does first: gate the untrained adapters and keep them as good."""
    core.gate(0, {"t": 0.5}, guarded=[])
    core.mark_good({"t": 0.5})
    core.checkpoint(0, good=True)


def test_only_the_core_versions_the_adapters_and_only_applied_updates_count(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    core = _core(tiny_policy, tmp_path)
    _start(core)
    learned = core.learn(1, _episodes(tiny_policy, 1))
    assert learned.report.applied and learned.keep and learned.kind == "rl"
    assert learned.version == core.version == tiny_policy.version == 1 and core.learner.step == 1
    flat = core.learn(2, _episodes(tiny_policy, 2, spread=False))  # no reward spread: no step
    assert not flat.report.applied and flat.version == 1
    assert core.note_external_update() == 2  # a trainer outside the core changed the adapters


def test_a_rollback_restores_the_good_adapters_and_the_next_update_learns_slower(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    core = _core(tiny_policy, tmp_path)
    _start(core)
    good = AdapterSnapshot(tiny_policy)
    first = core.learn(1, _episodes(tiny_policy, 1))
    assert first.report.metrics["optim/lr"] == 1e-3 and good.distance(tiny_policy) > 0
    rejected = Verdict(False, (Finding("injected", True, "a test said no"),))
    assert core.rollback(1, rejected) == 0
    assert good.distance(tiny_policy) == 0.0 and tiny_policy.version == 2  # a new identity, never a repeat
    assert core.guard.state.lr_scale == 0.5
    # the guard's scale reaches the learner as a value, in the same call
    assert core.learn(2, _episodes(tiny_policy, 2)).report.metrics["optim/lr"] == 5e-4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["to_step"], r["reason"]) for r in records] == [("rollback", 0, "a test said no")]


def test_a_checkpoint_restores_adapters_optimizer_learner_guard_and_the_callers_state(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    core = _core(tiny_policy, tmp_path)
    _start(core)
    core.learn(1, _episodes(tiny_policy, 1))
    core.checkpoint(1, good=False, extra_state={"mine": [1, 2]})
    saved = AdapterSnapshot(tiny_policy)
    core.learn(2, _episodes(tiny_policy, 2))  # moves on past the checkpoint

    again = _core(tiny_policy, tmp_path)  # a new process would build the same core
    restored = again.restore()
    assert restored is not None and restored.step == 1 and restored.state["mine"] == [1, 2]
    assert saved.distance(tiny_policy) == 0.0 and again.version == 1 and again.learner.step == 1
    assert again.guard.state.reference_scores == {"t": 0.5}
    assert again.good_adapters is not None  # the step-0 adapters, the last good ones
    assert again.learner.optimizer is not None and again.learner.optimizer.state_dict()["state"]


def test_a_rejected_distillation_can_be_undone_at_once(tiny_policy: Policy, tmp_path: Path) -> None:
    # Any update larger than a millionth of the first is a "spike": the second is rejected.
    core = _core(tiny_policy, tmp_path, update_spike_factor=1e-6, spike_warmup=1)
    lesson = Lesson(tuple(tiny_policy.start("What is the code?")), tuple(tiny_policy.start("Code: zebra. Code?")))
    first = core.distil(-1, [lesson], undo_rejected=True)
    assert first.kind == "distill" and first.report.applied and first.keep and not first.undone
    before = [p.detach().clone() for p in trainable(tiny_policy)]
    second = core.distil(-1, [lesson], undo_rejected=True)
    assert second.report.applied and not second.keep and second.undone
    assert all(torch.equal(p, b) for p, b in zip(trainable(tiny_policy), before, strict=True))
    assert second.version == 3  # applied (2), then undone (3): the restored weights are named anew
