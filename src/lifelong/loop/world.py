"""The world-model job of a run (issue 23): learn how the games respond, and learn from it.

Each step the real moves of the step's multi-move episodes (world/transitions.py) go into a replay
of the newest moves, and, with its parts switched on:

* `learn`: the world model (its own copy of the base model and its own adapter) takes
  `updates_per_step` updates on that replay; it is saved beside the run's checkpoints
  (`<run_dir>/world`), where `lifelong play --agent RUN_DIR` finds it to plan with;
* `auxiliary`: the policy's own update also predicts the game's replies to the step's moves
  (implicit world modelling): a likelihood term in the GRPO update (learn/grpo.py, point 7);
* `imagined_per_item` (Dyna, needs `learn`): that many episodes per item of the step are played
  inside the world model from the real episodes' first observations (world/imagined.py) and learnt
  from as groups of their own. They are stored under their own split and never count as real
  experience or against a stage's budget.

Nothing here reads `info["answer"]` or `info["solution"]`: the world model knows a game only
through what the agent saw.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lifelong.errors import ConfigError
from lifelong.loop.actor import Job, play
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Episode, Sample
from lifelong.world.imagined import SPLIT as IMAGINED
from lifelong.world.imagined import ImaginedGame
from lifelong.world.model import WorldModel, WorldModelConfig, new_world_model, world_targets
from lifelong.world.transitions import all_transitions


@dataclass(frozen=True)
class WorldConfig:
    """A run's world model and the ways it is used; everything off by default."""

    learn: bool = False  # keep a world model of the run's games, updated every step
    updates_per_step: int = 4  # world-model updates a step (`model.batch_size` moves each)
    replay: int = 1024  # the newest real moves (with a recorded reply) the world model learns from
    auxiliary: bool = False  # the policy's update also predicts the games' replies
    # Moves a step's auxiliary term predicts, drawn from the step's own: every move of 32 maze
    # games made the update 4x as long as the policy term alone (dev/LOG.md, stop 25).
    auxiliary_moves: int = 32
    imagined_per_item: int = 0  # Dyna: episodes a step item plays inside the world model (0: off)
    model: WorldModelConfig = field(default_factory=WorldModelConfig)

    def __post_init__(self) -> None:
        if min(self.updates_per_step, self.replay, self.auxiliary_moves) < 1 or self.imagined_per_item < 0:
            raise ConfigError(
                "updates_per_step, replay and auxiliary_moves must be >= 1, imagined_per_item >= 0", "the defaults work"
            )
        if self.imagined_per_item and not self.learn:
            raise ConfigError("imagined episodes need a world model that learns", "set learn to true as well")
        if self.imagined_per_item == 1:
            raise ConfigError("imagined_per_item=1 gives groups of one: no advantage", "use 0 (off) or 2 and more")

    @property
    def enabled(self) -> bool:
        return self.learn or self.auxiliary

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        return cls(**{**d, "model": WorldModelConfig(**d.get("model", {}))})


@dataclass(frozen=True)
class WorldStep:
    """What the world-model job gives a step: targets for the policy's auxiliary term, imagined
    episodes to learn from, and metrics for the step's record."""

    auxiliary: tuple[Sample, ...] = ()
    imagined: tuple[Episode, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)


class WorldJob:
    """The world model of a run and the replay it learns from."""

    def __init__(self, config: WorldConfig, policy: Policy, model: str | None, run_dir: Path, seed: int) -> None:
        self.config = config
        self.policy = policy
        self.folder = run_dir / "world"
        self.model: WorldModel | None = new_world_model(model, config.model, seed) if config.learn else None
        self.replay: deque[Sample] = deque(maxlen=config.replay)  # targets of the newest real moves
        self.rng = random.Random(seed)

    def step(self, episodes: Sequence[Episode], sampling: GenerationConfig, generator: torch.Generator) -> WorldStep:
        """Take in the step's real episodes; learn, and imagine, as configured."""
        moves = all_transitions(episodes, self.config.model.history_turns)
        # Tokenised once: the replay keeps them and the auxiliary term draws from them (the policy
        # and the world model load the same model folder, so one tokenisation serves both).
        targets = world_targets(self.policy, moves)
        self.replay.extend(targets)
        metrics: dict[str, float] = {"world/moves": float(len(moves))}
        auxiliary: tuple[Sample, ...] = ()
        if self.config.auxiliary:
            auxiliary = tuple(self.rng.sample(targets, min(len(targets), self.config.auxiliary_moves)))
        imagined: tuple[Episode, ...] = ()
        if self.model is not None and self.replay:
            reports = self.model.fit(list(self.replay), self.config.updates_per_step, self.rng)
            metrics["world/nll"] = sum(r.metrics.get("loss/nll", 0.0) for r in reports) / len(reports)
            if self.config.imagined_per_item:
                imagined = tuple(self.imagine(episodes, sampling, generator))
                metrics["world/imagined"] = float(len(imagined))
                if imagined:
                    metrics["world/imagined_success"] = sum(e.success for e in imagined) / len(imagined)
        return WorldStep(auxiliary, imagined, metrics)

    def imagine(
        self, episodes: Sequence[Episode], sampling: GenerationConfig, generator: torch.Generator
    ) -> list[Episode]:
        """`imagined_per_item` episodes for every item of the step that is a multi-move game, played
        by the live policy inside the world model from the item's real first observation."""
        assert self.model is not None
        starts: dict[str, dict[int, str]] = {}
        limits: dict[str, int] = {}
        jobs: list[Job] = []
        for ep in episodes:
            if not ep.turns or int(ep.info.get("max_turns", 1)) < 2 or ep.seed in starts.setdefault(ep.env, {}):
                continue
            starts[ep.env][ep.seed] = ep.turns[0].observation
            limits[ep.env] = int(ep.info["max_turns"])
            group = f"{ep.group or ep.id}/{IMAGINED}"
            jobs += [Job(ep.env, ep.seed, group=group, split=IMAGINED)] * self.config.imagined_per_item
        model = self.model

        def make_env(label: str) -> ImaginedGame:
            return ImaginedGame(model, label, starts[label], limits[label])

        return play(self.policy, jobs, make_env, sampling, generator)

    def save(self) -> None:
        """The world model beside the run's checkpoints (nothing to save without one)."""
        if self.model is not None:
            self.model.save(self.folder)

    def restore(self, episodes: Sequence[Episode]) -> None:
        """After a resume: the saved world model, and the replay refilled from the stored episodes."""
        self.replay.extend(world_targets(self.policy, all_transitions(episodes, self.config.model.history_turns)))
        if self.model is not None and self.folder.is_dir():
            self.model.load(self.folder)


__all__ = ["WorldConfig", "WorldJob", "WorldStep"]
