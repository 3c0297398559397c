from __future__ import annotations

from pathlib import Path

import torch

from lifelong.guard.detectors import Rescored
from lifelong.guard.gate import Guard, GuardConfig
from lifelong.learn.grpo import GRPOConfig, GRPOLearner, make_batch
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Episode, Turn


def _batch_episodes(policy: Policy, seed: int) -> list[Episode]:
    ctx = policy.start("Pick a token")
    gen = GenerationConfig(thinking_tokens=0, answer_tokens=2)
    comps = policy.respond([ctx] * 8, gen, torch.Generator().manual_seed(seed))
    return [
        Episode(f"{seed}-{i}", "t", 0, (Turn(tuple(ctx), c, "q", float(i % 2)),), float(i % 2), bool(i % 2), {}, 0, "g")
        for i, c in enumerate(comps)
    ]


def _guard(policy: Policy, tmp_path: Path, **kw: object) -> Guard:
    return Guard(GuardConfig(**kw), tmp_path, [policy.start("probe one"), policy.start("probe two")])  # type: ignore[arg-type]


def test_learning_rate_spike_is_rejected_after_warmup(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path)
    learner = GRPOLearner(tiny_policy, GRPOConfig(learning_rate=1e-3, kl_coef=0.0))
    for step in range(4):
        lr_scale = guard.before_update(tiny_policy)
        report = learner.update(make_batch(_batch_episodes(tiny_policy, step)), lr_scale)
        verdict = guard.after_update(step, report, tiny_policy)
        assert verdict.keep, verdict.reason
    lr_scale = guard.before_update(tiny_policy)
    report = learner.update(make_batch(_batch_episodes(tiny_policy, 9)), 100 * lr_scale)  # the fault: lr x100
    verdict = guard.after_update(9, report, tiny_policy)
    assert not verdict.keep and "median" in verdict.reason
    assert '"detector": "update_spike"' in (tmp_path / "guard_events.jsonl").read_text()


def test_drift_is_zero_at_the_reference_and_grows_with_learning(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path, kl_drift_budget=1e-4)
    guard.mark_good(tiny_policy, {"t": 0.5})
    verdict = guard.gate(1, tiny_policy, {"t": 0.5}, guarded=["t"])
    assert verdict.keep and guard.last_drift.kl < 1e-6
    learner = GRPOLearner(tiny_policy, GRPOConfig(learning_rate=0.05, kl_coef=0.0))
    for step in range(3):
        learner.update(make_batch(_batch_episodes(tiny_policy, step)))
    verdict = guard.gate(2, tiny_policy, {"t": 0.5}, guarded=["t"])
    assert not verdict.keep and "KL drift" in verdict.reason


def test_probe_regression_on_a_guarded_task_rejects(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path, probe_drop_budget=0.1)
    guard.mark_good(tiny_policy, {"old": 0.8, "general": 0.6})
    assert not guard.gate(1, tiny_policy, {"old": 0.5, "general": 0.6}, guarded=["old", "general"]).keep
    # an unguarded task (not reached yet) may move freely
    assert guard.gate(2, tiny_policy, {"old": 0.8, "general": 0.6, "later": 0.0}, guarded=["old"]).keep


def test_general_ability_eroding_a_little_per_gate_is_rejected_against_the_pretrained_model(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    guard = _guard(tiny_policy, tmp_path, probe_drop_budget=0.1, general_drop_budget=0.08)
    guard.mark_good(tiny_policy, {"facts": 0.60, "task": 0.3})  # step 0: the pretrained model
    for step, facts in enumerate((0.55, 0.53), start=1):  # each gate within both budgets
        verdict = guard.gate(step, tiny_policy, {"facts": facts, "task": 0.5}, ["facts", "task"], ["facts"])
        assert verdict.keep, verdict.reason
        guard.mark_good(tiny_policy, {"facts": facts, "task": 0.5})
    # 5 points below the last good version (within 10) but 10 below the pretrained model (over 8)
    verdict = guard.gate(3, tiny_policy, {"facts": 0.50, "task": 0.5}, ["facts", "task"], ["facts"])
    assert not verdict.keep and "below the pretrained model" in verdict.reason
    # a trained task is held only to the last good version
    verdict = guard.gate(4, tiny_policy, {"facts": 0.60, "task": 0.45}, ["facts", "task"], ["facts"])
    assert verdict.keep, verdict.reason


def test_the_task_being_trained_is_held_to_a_tighter_budget(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path, probe_drop_budget=0.1, trained_drop_budget=0.05)
    guard.mark_good(tiny_policy, {"add": 0.70, "old": 0.60})
    # 8 points down on both: within the guarded budget for "old", over the trained budget for "add"
    scores = {"add": 0.62, "old": 0.52}
    verdict = guard.gate(4, tiny_policy, scores, guarded=["add", "old"], trained=["add"])
    assert not verdict.keep and "add fell 8.0 pts below the last good version while being trained" in verdict.reason
    assert [f.detector for f in verdict.findings] == ["trained_regression"]
    # the same drop on a task not trained since the last gate is interference, within budget
    assert guard.gate(5, tiny_policy, scores, guarded=["add", "old"], trained=["other"]).keep


def test_a_drop_over_budget_is_measured_again_against_the_right_reference(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path, probe_drop_budget=0.1, general_drop_budget=0.08, confirm_items=64)
    guard.mark_good(tiny_policy, {"facts": 0.60, "old": 0.60})
    asked: list[tuple[str, str]] = []

    def no_drop_on_fresh_items(task: str, against: str) -> Rescored:
        asked.append((task, against))
        return Rescored(now=0.5, reference=0.5, items=64)

    # 6 and 7 of 32 items lost: over both budgets on the probes, not over 96 items
    scores = {"facts": 0.40625, "old": 0.375}
    tasks = ["facts", "old"]
    verdict = guard.gate(1, tiny_policy, scores, tasks, ["facts"], rescore=no_drop_on_fresh_items, probe_items=32)
    assert verdict.keep, verdict.reason
    assert sorted(asked) == [("facts", "last_good"), ("facts", "pretrained"), ("old", "last_good")]
    assert {f.detector for f in verdict.findings} == {"probe_regression", "general_erosion"}
    assert all("kept" in f.message for f in verdict.findings)
    assert '"pooled_drops"' in (tmp_path / "guard_events.jsonl").read_text()
    # without a rescorer (or with confirm_items=0) the probes decide, as before
    assert not guard.gate(2, tiny_policy, scores, ["facts", "old"], ["facts"]).keep
    off = _guard(tiny_policy, tmp_path / "off", confirm_items=0)
    off.mark_good(tiny_policy, {"old": 0.60})
    assert not off.gate(1, tiny_policy, scores, ["old"], rescore=no_drop_on_fresh_items, probe_items=32).keep


def test_rollback_backs_off_and_good_gates_recover_the_learning_rate(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path)
    guard.rolled_back(3, 1, "test")
    guard.rolled_back(4, 1, "test")
    assert guard.state.lr_scale == 0.25 and guard.state.rollbacks == 2
    guard.mark_good(tiny_policy, {})
    assert guard.state.lr_scale == 0.5  # a passed gate undoes one back-off
    guard.mark_good(tiny_policy, {})
    guard.mark_good(tiny_policy, {})
    assert guard.state.lr_scale == 1.0  # and never goes past the configured rate


def test_slipping_tasks_are_reported_worst_first(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path, slip_threshold=0.05)
    guard.gate(1, tiny_policy, {"a": 0.9, "b": 0.8, "c": 0.5}, guarded=[])
    guard.gate(2, tiny_policy, {"a": 0.7, "b": 0.5, "c": 0.48}, guarded=[])
    assert guard.slipping() == ["b", "a"]


def test_disabled_guard_checks_nothing(tiny_policy: Policy, tmp_path: Path) -> None:
    guard = _guard(tiny_policy, tmp_path, enabled=False)
    episodes = _batch_episodes(tiny_policy, 0)
    assert guard.screen(0, episodes) == episodes
    guard.mark_good(tiny_policy, {"t": 1.0})
    assert guard.gate(1, tiny_policy, {"t": 0.0}, guarded=["t"]).keep
    assert guard.slipping() == []
