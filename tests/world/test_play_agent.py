"""`lifelong play GAME --agent RUN_DIR [--show-plan]`: a run's agent plays, imagining before acting."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from lifelong.cli import main
from lifelong.memory.store import ExperienceStore
from lifelong.model.loading import load_model
from lifelong.model.policy import Policy
from lifelong.world.model import WorldModel, WorldModelConfig
from lifelong.world.transitions import all_transitions


@pytest.fixture(scope="module")
def maze_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    argv = ["run", "--model", str(tiny_model_dir), "--tasks", "maze", "--episodes", "16", "--probe-size", "2",
            "--runs-dir", str(runs), "--run-id", "r", "--quiet", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    return runs / "r"


def test_the_agent_plays_and_shows_what_it_imagined(
    maze_run: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExperienceStore(maze_run / "experience.sqlite") as store:
        moves = all_transitions(store.iter_episodes(split="train"))
    model, tokenizer, name = load_model(str(tiny_model_dir))
    world = WorldModel(Policy(model, tokenizer, name=name), WorldModelConfig(prediction_tokens=12))
    world.learn(moves, 2, random.Random(0))
    world.save(maze_run / "world")

    argv = ["play", "maze", "--agent", str(maze_run), "--seed", "3", "--threads", "1"]
    assert main([*argv, "--show-plan"]) == 0
    out = capsys.readouterr().out
    assert "planning" in out and "imagining move 1 of 8" in out and " -> " in out
    moves_played = re.search(r"in (\d+) moves$", out.strip())
    assert moves_played is not None and out.count("imagining move") == int(moves_played.group(1))  # a plan a move
    assert main(argv) == 0  # the world model found in RUN_DIR/world, plans kept to itself
    quiet = capsys.readouterr().out
    assert "imagining" not in quiet and "agent [1]:" in quiet


def test_asking_for_plans_without_an_agent_or_world_model_is_one_clear_error(
    maze_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["play", "maze", "--show-plan"]) == 2
    assert "--agent" in capsys.readouterr().err
    assert main(["play", "maze", "--agent", str(maze_run), "--world", str(tmp_path), "--threads", "1"]) == 2
    assert "no world model" in capsys.readouterr().err
    assert main(["play", "maze", "--agent", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
