"""The actor: plays many episodes at once with the live policy.

All episodes of a call advance turn by turn together, so every turn is one batched sampling call.
A multi-turn episode keeps its context as token ids and grows it with each reply and observation.
An environment that raises is recorded as a failed episode (reward 0, `info["error"]`), not an
exception that kills the batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lifelong.envs.base import Env
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.timing import part
from lifelong.types import Completion, Episode, Turn


@dataclass(frozen=True)
class Job:
    """One episode to play: which environment, which seed, which GRPO group. `context` is put in
    front of the first observation (lessons recalled from memory, for a retry)."""

    env: str
    seed: int
    group: str = ""
    split: str = "train"
    context: str = ""


class Actor(Protocol):
    """Plays jobs with the current policy. The runtime only talks to this, so episodes can come
    from this process (`LocalActor`) or from remote rollout workers, with one loop for both."""

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        """Play every job to the end; episodes in the order of `jobs`."""
        ...

    def prefetch(self, jobs: Sequence[Job], gen: GenerationConfig) -> None:
        """The jobs the next `play` will most likely ask for, announced before the runtime learns.
        An actor may start sampling them meanwhile, and must then bound how stale what it returns
        is (`scale.ray_actor.RayActor`); one that samples on demand ignores this."""
        ...


class LocalActor:
    """Plays in this process with the live policy (the learner's own weights)."""

    def __init__(
        self, policy: Policy, make_env: Callable[[str], Env], generator: torch.Generator | None = None
    ) -> None:
        self.policy = policy
        self.make_env = make_env
        self.generator = generator

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        return play(self.policy, jobs, self.make_env, gen, self.generator)

    def prefetch(self, jobs: Sequence[Job], gen: GenerationConfig) -> None:
        pass  # it plays with the live weights on demand: nothing to sample ahead


@dataclass
class _Live:
    job: Job
    env: Env
    context: list[int]
    observation: str  # the latest observation, answered by the next turn
    turns: list[Turn]
    info: dict[str, Any]
    reward: float = 0.0
    done: bool = False


def play(
    policy: Policy,
    jobs: Sequence[Job],
    make_env: Callable[[str], Env],
    gen: GenerationConfig,
    generator: torch.Generator | None = None,
) -> list[Episode]:
    """Play every job to the end; returns episodes in the order of `jobs`."""
    live: list[_Live] = []
    for job in jobs:
        env = make_env(job.env)
        try:
            observation, info = env.reset(seed=job.seed)
        except Exception as exc:  # a broken environment fails its episode, not the batch
            live.append(_Live(job, env, [], "", [], {"error": f"reset: {type(exc).__name__}: {exc}"}, done=True))
            continue
        shown = f"{job.context}\n\n{observation}" if job.context else observation
        live.append(_Live(job, env, policy.start(shown), observation, [], dict(info)))
    for _ in range(max((e.env.max_turns for e in live), default=0)):
        active = [e for e in live if not e.done]
        if not active:
            break
        completions = policy.respond([e.context for e in active], gen, generator)
        for e, completion in zip(active, completions, strict=True):
            _advance(policy, e, completion)
    return [_episode(e, policy.version) for e in live]


def _advance(policy: Policy, e: _Live, completion: Completion) -> None:
    observation = e.observation
    try:
        with part("score"):
            result = e.env.step(completion.answer)
    except Exception as exc:
        e.info["error"] = f"step: {type(exc).__name__}: {exc}"
        e.turns.append(Turn(tuple(e.context), completion, observation, 0.0))
        e.done = True
        return
    e.turns.append(Turn(tuple(e.context), completion, observation, float(result.reward)))
    e.reward += float(result.reward)
    e.info.update(result.info)
    if result.terminated or result.truncated or len(e.turns) >= e.env.max_turns:
        e.done = True
        e.info["truncated"] = bool(result.truncated or (not result.terminated))
    else:
        e.context = policy.extend(e.context, completion, result.observation)
        e.observation = result.observation


def _episode(e: _Live, version: int) -> Episode:
    return Episode(
        id=uuid.uuid4().hex,
        env=e.job.env,
        seed=e.job.seed,
        turns=tuple(e.turns),
        reward=e.reward,
        success="error" not in e.info and e.reward >= e.env.success_threshold,
        info=e.info,
        adapter_version=version,
        group=e.job.group,
        split=e.job.split,
        created=time.time(),
    )
