"""Exploration for groups with no learning signal: more samples, hotter, before the update.

A GRPO group whose samples all failed has no reward spread and teaches nothing. Before the step
learns, each such group gets `samples` more attempts at `temperature` (hotter than the run's), in
the same group: one success among them gives the group a spread, and with it a gradient. The hot
samples carry their sampler's log-probs (the temperature-scaled distribution they were drawn
from), so the learner's importance ratio pi_theta / pi_sampler (learn/grpo.py) weighs them as
off-policy samples, clipped as any. Every extra attempt is stored (split "explore") and counted as
an episode played.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from lifelong.errors import ConfigError
from lifelong.loop.actor import Actor, Job
from lifelong.model.policy import GenerationConfig
from lifelong.types import Episode

SPLIT = "explore"


@dataclass(frozen=True)
class ExplorationConfig:
    enabled: bool = False  # off until issue 22's benchmark measures it
    samples: int = 8  # extra attempts per group whose samples all failed
    temperature: float = 1.3
    # With a curriculum, explore a task only once it is at its easiest version: before that a step
    # down the ladder is cheaper than `samples` hot attempts a group (they took 32 of a step's
    # budget on the hard stream and solved one group in a stage; dev/LOG.md, stop 22).
    after_curriculum: bool = True

    def __post_init__(self) -> None:
        if self.samples < 1 or self.temperature <= 0:
            raise ConfigError("exploration.samples must be >= 1 and temperature > 0", "defaults: 8 and 1.3")


def failed_groups(episodes: Sequence[Episode]) -> list[Episode]:
    """One episode of each group in which every sample failed (single-turn or not)."""
    groups: dict[str, list[Episode]] = {}
    for ep in episodes:
        groups.setdefault(ep.group, []).append(ep)
    return [eps[0] for eps in groups.values() if not any(e.success for e in eps)]


def explore(
    actor: Actor,
    episodes: Sequence[Episode],
    config: ExplorationConfig,
    gen: GenerationConfig,
    contexts: dict[str, str],
) -> list[Episode]:
    """The extra attempts for the groups of `episodes` that all failed, in those groups.
    `gen` is the run's sampling, whose temperature is raised; `contexts` gives each group's
    context as its jobs had it (memory recalled into the prompt)."""
    stuck = failed_groups(episodes)
    if not stuck:
        return []
    jobs = [
        Job(ep.env, ep.seed, group=ep.group, split=SPLIT, context=contexts.get(ep.group, ""))
        for ep in stuck
        for _ in range(config.samples)
    ]
    return actor.play(jobs, replace(gen, temperature=config.temperature))


def exploration_metrics(explored: Sequence[Episode]) -> dict[str, float]:
    """A step's record of its exploration: groups explored, and those it gave a success."""
    return {
        "explore/groups": float(len({e.group for e in explored})),
        "explore/solved_groups": float(len({e.group for e in explored if e.success})),
    }


__all__ = ["SPLIT", "ExplorationConfig", "exploration_metrics", "explore", "failed_groups"]
