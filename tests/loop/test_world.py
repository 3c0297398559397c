"""The world-model job of a run: it learns the games' replies, feeds the policy's auxiliary term,
and plays imagined episodes (Dyna) that never count as real experience."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tests.conftest import make_learnable_model, model_folder
from transformers import PreTrainedTokenizerBase

from lifelong.envs.games import GridMaze
from lifelong.errors import ConfigError
from lifelong.learn.grpo import GRPOConfig, GRPOLearner
from lifelong.loop.actor import Job, play
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.loop.world import WorldConfig
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.types import Batch
from lifelong.world.imagined import SPLIT, ImaginedGame
from lifelong.world.model import WorldModelConfig, world_sample
from lifelong.world.transitions import GameState, Outcome, all_transitions


def maze_config(model_dir: Path, world: WorldConfig, episodes: int = 16) -> RunConfig:
    stream = Stream("w", (Stage(Task.of("maze", size=3, walls=0.0, max_turns=4), episodes),), probe_size=2)
    return RunConfig(
        stream=stream.to_dict(), model=str(model_dir), prompts_per_step=2, answer_tokens=3,
        grpo=GRPOConfig(group_size=4), world=world,
    )  # fmt: skip


@pytest.fixture(scope="module")
def learnable_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> Path:
    return model_folder(tmp_path_factory.mktemp("learnable"), make_learnable_model(tokenizer), tokenizer)


def test_a_run_learns_a_world_model_imagines_and_resumes(
    learnable_dir: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    from lifelong.model.loading import load_model

    world = WorldConfig(learn=True, auxiliary=True, imagined_per_item=2, updates_per_step=2,
                        model=WorldModelConfig(prediction_tokens=10, batch_size=4))  # fmt: skip
    config = maze_config(learnable_dir, world)
    model, tok, name = load_model(str(learnable_dir))
    runtime = Runtime(config, Policy(model, tok, name=name, lora=LoraSettings(rank=4, alpha=8)), tmp_path / "run")
    summary = runtime.run()
    assert summary.episodes == 16  # real episodes only: two steps of 2 items x 4
    updates = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    updates = [u for u in updates if u["type"] == "update"]
    assert all(u["world/moves"] > 0 and "world/nll" in u for u in updates)
    assert [u["world/imagined"] for u in updates] == [4.0, 4.0]  # 2 items x 2 imagined episodes
    imagined = runtime.store.episodes(run_id="run", split=SPLIT)
    assert len(imagined) == 8 and all(e.info["imagined"] and e.group.endswith("/imagined") for e in imagined)
    assert all(e.seed in {r.seed for r in runtime.store.episodes(run_id="run", split="train")} for e in imagined)
    assert all(sum(t.reward for t in e.turns) <= 1.0 for e in imagined)
    assert (tmp_path / "run" / "world").is_dir()
    saved_step = runtime.world.model.learner.step  # type: ignore[union-attr]

    again = Runtime(config, Policy(*load_model(str(learnable_dir))[:2], lora=LoraSettings(rank=4, alpha=8)),
                    tmp_path / "run")  # fmt: skip
    assert again.restore() == 2
    assert again.world is not None and again.world.model is not None
    assert again.world.model.learner.step == saved_step and len(again.world.replay) == len(runtime.world.replay)


def test_the_auxiliary_term_teaches_even_when_no_group_has_a_signal(tiny_policy: Policy) -> None:
    episodes = play(tiny_policy, [Job("maze", s) for s in range(2)], lambda _: GridMaze(), GenerationConfig("none"),
                    torch.Generator().manual_seed(0))  # fmt: skip
    targets = tuple(world_sample(tiny_policy, m) for m in all_transitions(episodes))
    learner = GRPOLearner(tiny_policy, GRPOConfig(auxiliary_coef=1.0, learning_rate=1e-2))
    empty = Batch((), 2, 2, 0.0, 0.0)
    assert not learner.update(empty).applied  # nothing to learn from: no step
    reports = [learner.update(Batch((), 2, 2, 0.0, 0.0, auxiliary=targets)) for _ in range(8)]
    assert all(r.applied for r in reports)
    assert reports[-1].metrics["auxiliary/nll"] < reports[0].metrics["auxiliary/nll"]
    off = GRPOLearner(tiny_policy, GRPOConfig(auxiliary_coef=0.0))
    assert not off.update(Batch((), 2, 2, 0.0, 0.0, auxiliary=targets)).applied


class CountingWorld:
    """Pays 0.7 on every move and ends the game on the third; counts its calls."""

    def __init__(self) -> None:
        self.config = WorldModelConfig()
        self.calls = 0

    def imagine(self, states: Sequence[GameState], actions: Sequence[str]) -> list[Outcome]:
        self.calls += 1
        return [Outcome(f"after {a}", 0.7, s.turn >= 3) for s, a in zip(states, actions, strict=True)]


def test_imagined_games_step_together_and_pay_at_most_one(tiny_policy: Policy) -> None:
    world = CountingWorld()
    starts = {s: f"start {s}" for s in range(5)}
    episodes = play(
        tiny_policy, [Job("maze", s, group="g", split=SPLIT) for s in range(5)],
        lambda label: ImaginedGame(world, label, starts, max_turns=6),  # type: ignore[arg-type]
        GenerationConfig("none", answer_tokens=3), torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert world.calls == 3  # one call a turn for all five games
    assert all(len(e.turns) == 3 and e.reward == pytest.approx(1.0) and e.split == SPLIT for e in episodes)
    assert [e.turns[0].observation for e in episodes] == [f"start {s}" for s in range(5)]
    assert all(e.turns[1].observation.startswith("after ") for e in episodes)


def test_world_settings_are_checked_and_round_trip() -> None:
    with pytest.raises(ConfigError, match="learn"):
        WorldConfig(imagined_per_item=4)
    with pytest.raises(ConfigError, match="groups of one"):
        WorldConfig(learn=True, imagined_per_item=1)
    world = WorldConfig(learn=True, imagined_per_item=4, model=WorldModelConfig(history_turns=2))
    config = RunConfig(stream=Stream("s", (Stage(Task.of("maze"), 8),)).to_dict(), world=world)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))).world == world


def test_the_auxiliary_term_predicts_a_bounded_draw_of_the_steps_moves(tiny_policy: Policy, tmp_path: Path) -> None:
    from lifelong.loop.world import WorldJob

    episodes = play(tiny_policy, [Job("maze", s) for s in range(3)], lambda _: GridMaze(), GenerationConfig("none"),
                    torch.Generator().manual_seed(0))  # fmt: skip
    job = WorldJob(WorldConfig(auxiliary=True, auxiliary_moves=3), tiny_policy, None, tmp_path, seed=0)
    step = job.step(episodes, GenerationConfig("none"), torch.Generator())
    assert job.model is None and not step.imagined  # the auxiliary term needs no world model
    assert len(step.auxiliary) == 3 and step.metrics["world/moves"] == sum(len(e.turns) for e in episodes)
    targets = [world_sample(tiny_policy, t) for t in all_transitions(episodes)]
    moves = {(m.prompt_ids, m.completion_ids) for m in targets}
    assert {(s.prompt_ids, s.completion_ids) for s in step.auxiliary} <= moves


def test_a_failing_world_model_fails_its_imagined_games_not_the_batch(tiny_policy: Policy) -> None:
    class Broken(CountingWorld):
        def imagine(self, states: Sequence[GameState], actions: Sequence[str]) -> list[Outcome]:
            raise ValueError("out of memory")

    starts = {0: "start", 1: "start"}
    episodes = play(tiny_policy, [Job("maze", s) for s in range(2)],
                    lambda label: ImaginedGame(Broken(), label, starts, max_turns=4),  # type: ignore[arg-type]
                    GenerationConfig("none", answer_tokens=3), torch.Generator().manual_seed(0))  # fmt: skip
    assert all(len(e.turns) == 1 and "out of memory" in e.info["error"] and not e.success for e in episodes)


def test_a_world_model_learning_beside_the_policy_leaves_the_policys_run_unchanged(
    learnable_dir: Path, tmp_path: Path
) -> None:
    from lifelong.model.adapters import adapter_state
    from lifelong.model.loading import load_model

    def run(world: WorldConfig, name: str) -> dict[str, torch.Tensor]:
        model, tok, model_name = load_model(str(learnable_dir))
        torch.manual_seed(0)
        policy = Policy(model, tok, name=model_name, lora=LoraSettings(rank=4, alpha=8))
        Runtime(maze_config(learnable_dir, world), policy, tmp_path / name).run()
        return adapter_state(policy)

    plain = run(WorldConfig(), "plain")
    beside = run(WorldConfig(learn=True, updates_per_step=1, model=WorldModelConfig(prediction_tokens=8)), "beside")
    assert plain.keys() == beside.keys() and all(torch.equal(plain[k], beside[k]) for k in plain)
    assert (tmp_path / "beside" / "world").is_dir() and not (tmp_path / "plain" / "world").exists()
