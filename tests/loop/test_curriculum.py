"""The automatic curriculum (issue 22): a task whose attempts all fail is trained on easier versions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lifelong.envs.tasks import WORDS, FirstLetter, Uppercase
from lifelong.errors import ConfigError
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.curriculum import METRIC, Curriculum, CurriculumConfig, halving, ladder
from lifelong.loop.explore import SPLIT as EXPLORE_SPLIT
from lifelong.loop.explore import ExplorationConfig
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.model.policy import Policy
from lifelong.streams.stream import ProbeSet, Stage, Stream, Task
from lifelong.types import Completion, Episode, StopReason, Turn

ADD = Task.of("add", max_value=20)


def _episode(env: str, success: bool) -> Episode:
    c = Completion((1,), (0.0,), (1,), "", "x", StopReason.ANSWERED)
    r = float(success)
    return Episode("e", env, 1, (Turn((1,), c, "q", r),), r, success, {"answer": "y"}, 0, "g")


def test_halving_steps_towards_the_easiest_value() -> None:
    assert halving(20, 1) == [20, 10, 5, 3, 2, 1]
    assert halving(5, 3) == [5, 4, 3]
    assert halving(3, 3) == [3] and halving(2, 9) == [2]  # already at or below the easiest


def test_a_ladder_holds_easier_versions_with_enough_items_outside_the_probes() -> None:
    probes = ProbeSet(ADD, 16)
    versions = ladder(ADD, probes, min_items=8)
    assert [v.label for v in versions] == [
        "add(max_value=20)", "add(max_value=10)", "add(max_value=5)", "add(max_value=3)", "add(max_value=2)"
    ]  # max_value=1 has 4 items: fewer than 8  # fmt: skip
    assert ladder(Task.of("uppercase"), ProbeSet(Task.of("uppercase"), 8), 8)[1].label == "uppercase(max_length=4)"
    products = Task.of("rg:products", max_digits=3)
    assert [v.label for v in ladder(products, ProbeSet(products, 8), 8)] == [
        "rg:products(max_digits=3)", "rg:products(max_digits=2)", "rg:products(max_digits=1)"
    ]  # a reasoning-gym task's knobs step too  # fmt: skip
    assert ladder(Task.of("rg:basic_arithmetic"), ProbeSet(Task.of("rg:basic_arithmetic"), 4), 8) == [
        Task.of("rg:basic_arithmetic")
    ]  # no knobs declared: no easier version


def test_an_easier_versions_items_never_include_a_probe_item_of_the_task() -> None:
    probes = ProbeSet(ADD, 48)
    easier = Task.of("add", max_value=5)
    env = easier.make()
    keys = {env.item_key(s) for s in probes.training_seeds(random.Random(0), 200, items=easier)}
    assert len(keys) > 8 and not keys & probes.keys


def test_all_failing_steps_down_and_success_steps_back_up() -> None:
    probes = {ADD: ProbeSet(ADD, 16)}
    curriculum = Curriculum(CurriculumConfig(enabled=True, up_at=0.5), probes, [ADD])
    assert curriculum.version(ADD) == ADD
    for played in (0, 2, 3, 4, 4):  # halfway down the rest each time; the last level holds
        assert not curriculum.easiest("add(max_value=20)") or played == 4
        levels = curriculum.observe([_episode(curriculum.version(ADD).label, False)] * 4)
        assert levels == {f"{METRIC}add(max_value=20)": float(played)}
    assert curriculum.version(ADD) == Task.of("add", max_value=2) and curriculum.easiest("add(max_value=2)")
    curriculum.observe([_episode("add(max_value=2)", s) for s in (True, False, False, False)])  # 1/4: stays
    assert curriculum.levels["add(max_value=20)"] == 4
    curriculum.observe([_episode("add(max_value=2)", s) for s in (True, True, False, False)])  # 1/2: back up
    assert curriculum.version(ADD) == Task.of("add", max_value=3)
    assert curriculum.observe([_episode("letter", False)] * 4) == {}  # a task without a ladder here: ignored
    assert curriculum.state() == {"add(max_value=20)": 3}
    other = Curriculum(CurriculumConfig(enabled=True), probes, [ADD])
    other.restore({"add(max_value=20)": 99, "gone": 1})
    assert other.state() == {"add(max_value=20)": 4}
    assert curriculum.easiest("letter")  # no ladder: nothing easier to go to


def test_one_level_a_step_when_asked() -> None:
    curriculum = Curriculum(CurriculumConfig(enabled=True, halfway=False), {ADD: ProbeSet(ADD, 16)}, [ADD])
    for played in (0, 1, 2, 3, 4, 4):
        levels = curriculum.observe([_episode(curriculum.version(ADD).label, False)] * 4)
        assert levels == {f"{METRIC}add(max_value=20)": float(played)}


def test_a_bad_setting_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match="up_at"):
        CurriculumConfig(up_at=0.0)


def test_word_length_knobs_keep_the_default_items() -> None:
    """letter and uppercase gained a `max_length` knob; at its default every item is as before."""
    for seed in range(50):
        word = random.Random(seed).choice(WORDS)
        assert FirstLetter().generate(random.Random(seed)).meta["word"] == word
        assert Uppercase().generate(random.Random(seed)).meta["word"] == word
    short = {Uppercase(max_length=4).generate(random.Random(s)).meta["word"] for s in range(200)}
    assert short and all(len(w) <= 4 for w in short)


def test_a_run_with_the_curriculum_trains_easier_versions_resumes_at_its_level_and_reports(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    """The tiny model solves nothing: every step fails, so each step goes halfway down the rest of
    the ladder, and the probes stay on the task as the stream set it."""
    from lifelong.evaluate.report import write_report

    stream = Stream("t", (Stage(ADD, 24),), probe_size=4)
    config = RunConfig.for_method(
        "grpo", stream=stream.to_dict(), prompts_per_step=2, eval_every=0, answer_tokens=3,
        grpo=GRPOConfig(group_size=4), curriculum=CurriculumConfig(enabled=True),
    )  # fmt: skip
    runtime = Runtime(config, tiny_policy, tmp_path / "run")
    runtime.run(stop_after=2)
    played = [e.env for e in runtime.store.episodes(split="train")]
    assert played == ["add(max_value=20)"] * 8 + ["add(max_value=5)"] * 8

    resumed = Runtime(config, tiny_policy, tmp_path / "run")
    summary = resumed.run(resume=True)
    assert resumed.curriculum is not None and resumed.curriculum.state() == {"add(max_value=20)": 4}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    levels = [r[f"{METRIC}add(max_value=20)"] for r in records if r["type"] == "update"]
    assert levels == [0.0, 2.0, 3.0]  # the level each step was played at, the third after the resume
    assert [e.env for e in resumed.store.episodes(split="train")][16:] == ["add(max_value=3)"] * 8
    assert {e.env for e in resumed.store.episodes(split="probe")} == {"add(max_value=20)"}
    report = write_report(tmp_path / "run", summary.to_json(), config.to_dict()).read_text()
    assert "## Curriculum" in report and (tmp_path / "run" / "curriculum.png").stat().st_size > 5_000


def test_exploration_waits_until_the_curriculum_is_at_its_easiest(tiny_policy: Policy, tmp_path: Path) -> None:
    """Every step fails: the levels go 0, 2, 3, 4, 4, and only the steps at the easiest level (4)
    spend samples on exploration; without `after_curriculum` every step does."""
    stream = Stream("t", (Stage(ADD, 40),), probe_size=4)
    explored_steps = {}
    for after in (True, False):
        config = RunConfig.for_method(
            "grpo", stream=stream.to_dict(), prompts_per_step=2, eval_every=0, answer_tokens=3,
            grpo=GRPOConfig(group_size=4), curriculum=CurriculumConfig(enabled=True),
            exploration=ExplorationConfig(enabled=True, samples=2, after_curriculum=after),
        )  # fmt: skip
        runtime = Runtime(config, tiny_policy, tmp_path / f"run-{after}")
        runtime.run()
        explored_steps[after] = [step for step in range(1, 6) if runtime.store.episodes(step=step, split=EXPLORE_SPLIT)]
    assert explored_steps == {True: [4, 5], False: [1, 2, 3, 4, 5]}
