from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.evaluate.report import write_report
from lifelong.learn.grpo import GRPOConfig
from lifelong.learn.sft import SFTConfig
from lifelong.loop.runtime import Method, RunConfig, RunState, Runtime, UpdateRule
from lifelong.model.policy import Policy
from lifelong.streams.stream import Stage, Stream, Task


def tiny_config(episodes: int = 16) -> RunConfig:
    stream = Stream(
        "t", (Stage(Task.of("add", max_value=5), episodes), Stage(Task.of("letter"), episodes)), probe_size=4
    )
    return RunConfig(
        stream=stream.to_dict(), prompts_per_step=2, eval_every=2, answer_tokens=3, grpo=GRPOConfig(group_size=4)
    )


def test_a_run_acts_stores_learns_and_reports(tiny_policy: Policy, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    runtime = Runtime(tiny_config(), tiny_policy, run_dir)
    summary = runtime.run()
    assert summary.tasks == ["add(max_value=5)", "letter"]
    assert summary.episodes == 32
    assert set(summary.before) == set(summary.after) == set(summary.tasks)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["type"] == "update"]
    assert [u["step"] for u in updates] == list(range(1, 5))
    assert [u["stage"] for u in updates] == ["add(max_value=5)"] * 2 + ["letter"] * 2
    evals = [r["step"] for r in records if r["type"] == "eval"]
    assert evals == [0, 2, 4]  # before, stage end (also every 2nd step), end
    # Where each step's time went, each second once: sampling, the reward, the update, the guard,
    # the store, the checkpoint, and the evaluation the gate piggybacks on (steps 2 and 4).
    parts = [r for r in records if r["type"] == "parts"]
    assert [p["step"] for p in parts] == [1, 2, 3, 4]
    for p in parts:
        assert {"sample", "score", "learn", "guard", "store", "checkpoint", "other"} <= set(p["time/parts"])
        assert sum(p["time/parts"].values()) == pytest.approx(p["time/step_s"], rel=0.01, abs=0.01)
    assert "evaluation/sample" in parts[1]["time/parts"] and "evaluation/sample" not in parts[0]["time/parts"]
    assert runtime.store.count(run_id="run", split="train") == 32
    assert runtime.store.count(run_id="run", split="probe") == 3 * 8
    assert runtime.ring.latest().step == 4  # type: ignore[union-attr]
    report = write_report(run_dir, summary.to_json(), runtime.config.to_dict())
    assert "| add(max_value=5) |" in report.read_text()
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000


def test_probe_items_never_appear_in_training(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime = Runtime(tiny_config(), tiny_policy, tmp_path / "run")
    runtime.run()
    train_questions = {e.turns[0].observation for e in runtime.store.episodes(split="train")}
    probe_questions = {e.turns[0].observation for e in runtime.store.episodes(split="probe")}
    assert probe_questions and not train_questions & probe_questions


def test_config_roundtrips_through_json(tmp_path: Path) -> None:
    config = tiny_config()
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_json_keeps_plain_strings_and_old_run_folders_still_load() -> None:
    saved = json.loads(json.dumps(RunConfig.for_method("sft", stream=tiny_config().stream).to_dict()))
    assert (saved["method"], saved["update_rule"]) == ("sft", "sft")
    # A config.json from before SFT had its own settings: its SFT learner read GRPO's.
    # Such a folder's GRPO settings had micro-batches of 16 samples and no token bound.
    grpo = {k: v for k, v in saved["grpo"].items() if k != "micro_batch_tokens"} | {"micro_batch": 16}
    old = {k: v for k, v in saved.items() if k != "sft"} | {"grpo": {**grpo, "learning_rate": 1e-3}}
    config = RunConfig.from_dict(old)
    assert config.method is Method.SFT and config.update_rule is UpdateRule.SFT
    assert config.sft == SFTConfig(learning_rate=1e-3, micro_batch=16)
    assert config.grpo.micro_batch_tokens == 2048  # a field the folder lacks takes its default
    with pytest.raises(ConfigError, match="unknown update_rule"):
        RunConfig(stream={}, update_rule="adam")


def test_run_state_loads_from_a_checkpoint_state() -> None:
    saved = {"before": {"a": 0.5}, "evals": [{"step": 0}], "episodes": 16, "seconds": 3.5, "version": 2, "rng": []}
    state = RunState.from_dict(saved)
    assert state == RunState({"a": 0.5}, [{"step": 0}], 16, 3.5)
    assert RunState.from_dict(state.to_dict()) == state


def test_later_stages_rehearse_earlier_tasks(tiny_policy: Policy, tmp_path: Path) -> None:
    config = RunConfig.from_dict({**tiny_config().to_dict(), "prompts_per_step": 4, "rehearsal": 0.25})
    runtime = Runtime(config, tiny_policy, tmp_path / "run")
    first, second = runtime.schedule[0], runtime.schedule[-1]
    assert [t.label for t in runtime.schedule.tasks_for(first)] == ["add(max_value=5)"] * 4
    assert [t.label for t in runtime.schedule.tasks_for(second)] == ["letter"] * 3 + ["add(max_value=5)"]
    plain = Runtime(RunConfig.from_dict({**config.to_dict(), "rehearsal": 0.0}), tiny_policy, tmp_path / "r2")
    assert [t.label for t in plain.schedule.tasks_for(second)] == ["letter"] * 4


def test_a_rehearsal_share_below_one_prompt_a_step_is_spread_over_steps(tiny_policy: Policy, tmp_path: Path) -> None:
    config = RunConfig.from_dict({**tiny_config(64).to_dict(), "prompts_per_step": 4, "rehearsal": 0.125})
    runtime = Runtime(config, tiny_policy, tmp_path / "run")
    second_stage = [slot for slot in runtime.schedule if slot.stage == 1]
    old = [sum(t.label == "add(max_value=5)" for t in runtime.schedule.tasks_for(slot)) for slot in second_stage]
    assert old == [0, 1, 0, 1]  # one old prompt every other step: 2 of the stage's 16 prompts


def test_without_a_fixed_share_only_a_slipping_task_is_rehearsed(tiny_policy: Policy, tmp_path: Path) -> None:
    config = RunConfig.from_dict({**tiny_config().to_dict(), "prompts_per_step": 4, "rehearsal": 0.0})
    runtime = Runtime(config, tiny_policy, tmp_path / "run")
    second = runtime.schedule[-1]
    add, letter = "add(max_value=5)", "letter"

    def tasks() -> list[str]:  # what the step plays, given what the guard sees slip
        return [job.env for job in runtime.jobs_for(second)[:: runtime.config.grpo.group_size]]

    assert tasks() == [letter] * 4
    # add was learned to 75%, then fell to 50% at the next gate: it is rehearsed until it recovers
    runtime.core.gate(1, {add: 0.75, letter: 0.0}, guarded=[])
    runtime.core.gate(2, {add: 0.50, letter: 0.25}, guarded=[])
    assert runtime.guard.slipping() == [add]
    assert tasks() == [letter] * 3 + [add]
    runtime.core.gate(3, {add: 0.75, letter: 0.25}, guarded=[])
    assert tasks() == [letter] * 4


def test_the_anchor_is_held_out_general_items_answered_by_the_pretrained_model(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    stream = Stream("t", (Stage(Task.of("add", max_value=5), 8),), probe_size=4, general=(Task.of("facts"),))
    settings = {"stream": stream.to_dict(), "answer_tokens": 3, "anchor_items": 5, "anchor_per_step": 2}
    runtime = Runtime(RunConfig.for_method("lifelong", **settings), tiny_policy, tmp_path / "run")
    with torch.no_grad():  # the adapters now differ from the pretrained model
        for name, p in tiny_policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    pool = runtime.anchors.pool()
    assert len(pool) == 5 and all(sum(a.loss_mask) for a in pool)
    assert len({a.prompt_ids for a in pool}) == 5  # distinct items
    probe = runtime.probes[Task.of("facts")]
    probe_prompts = {tuple(tiny_policy.start(Task.of("facts").make().reset(seed=s)[0])) for s in probe.seeds}
    assert not {a.prompt_ids for a in pool} & probe_prompts  # never the held-out probes
    greedy = runtime.config.generation(0.0)
    with tiny_policy.pretrained():
        pretrained = tiny_policy.respond([list(a.prompt_ids) for a in pool], greedy)
    assert [a.completion_ids for a in pool] == [c.token_ids for c in pretrained]
    # each update takes the next two; in three updates every item had its turn
    assert all(len(runtime.anchors.for_step(step)) == 2 for step in range(3))
    assert {a.prompt_ids for step in range(3) for a in runtime.anchors.for_step(step)} == {a.prompt_ids for a in pool}
    assert Runtime(RunConfig.for_method("grpo", **settings), tiny_policy, tmp_path / "g").anchors.for_step(1) == []
