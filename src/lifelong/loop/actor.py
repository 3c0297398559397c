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

from lifelong.envs.base import Env, StepResult
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.timing import part
from lifelong.types import Completion, Episode, Turn
from lifelong.world.transitions import GameState

# Chooses the reply of every live episode for one turn: (contexts, game states, sampling settings)
# -> one completion each. By default the policy's own sample; a planner imagines first
# (world/planner.py). Whatever decides, only the actor steps the real environment.
Decide = Callable[[Sequence[Sequence[int]], Sequence[GameState], GenerationConfig], list[Completion]]


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
    """Plays in this process with the live policy (the learner's own weights); `decide`, when
    given, chooses each reply instead of the policy's plain sample (a planner)."""

    def __init__(
        self,
        policy: Policy,
        make_env: Callable[[str], Env],
        generator: torch.Generator | None = None,
        decide: Decide | None = None,
    ) -> None:
        self.policy = policy
        self.make_env = make_env
        self.generator = generator
        self.decide = decide

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        return play(self.policy, jobs, self.make_env, gen, self.generator, self.decide)

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

    def state(self) -> GameState:
        """Where the game stands, for a planner: every earlier move and the next move's number."""
        history = tuple((t.observation, t.completion.answer) for t in self.turns)
        return GameState(self.job.env, self.observation, history, len(self.turns) + 1, self.env.max_turns)


def play(
    policy: Policy,
    jobs: Sequence[Job],
    make_env: Callable[[str], Env],
    gen: GenerationConfig,
    generator: torch.Generator | None = None,
    decide: Decide | None = None,
) -> list[Episode]:
    """Play every job to the end; returns episodes in the order of `jobs`. Each turn's replies come
    from `decide` when given, else from the policy's sampler."""
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
        contexts = [e.context for e in active]
        if decide is None:
            completions = policy.respond(contexts, gen, generator)
        else:
            completions = decide(contexts, [e.state() for e in active], gen)
        with part("score"):
            results = _step_all([e.env for e in active], [c.answer for c in completions])
        for e, completion, result in zip(active, completions, results, strict=True):
            _advance(policy, e, completion, result)
    return [_episode(e, policy.version) for e in live]


def _step_all(envs: Sequence[Env], actions: Sequence[str]) -> list[StepResult | Exception]:
    """Every environment's step, each class stepping its own environments together (`Env.step_all`)."""
    results: list[StepResult | Exception | None] = [None] * len(envs)
    by_class: dict[type[Env], list[int]] = {}
    for i, env in enumerate(envs):
        by_class.setdefault(type(env), []).append(i)
    for cls, rows in by_class.items():
        for i, result in zip(rows, cls.step_all([envs[i] for i in rows], [actions[i] for i in rows]), strict=True):
            results[i] = result
    return [r for r in results if r is not None]


def _advance(policy: Policy, e: _Live, completion: Completion, result: StepResult | Exception) -> None:
    observation = e.observation
    if isinstance(result, Exception):
        e.info["error"] = f"step: {type(result).__name__}: {result}"
        e.turns.append(Turn(tuple(e.context), completion, observation, 0.0))
        e.done = True
        return
    e.turns.append(Turn(tuple(e.context), completion, observation, float(result.reward)))
    e.reward += float(result.reward)
    e.info.update(result.info)
    if result.terminated or result.truncated or len(e.turns) >= e.env.max_turns:
        e.done = True
        e.info["truncated"] = bool(result.truncated or (not result.terminated))
        # What the game said last and how many moves it allowed: with every turn's observation,
        # the experience a world model learns from (world/transitions.py).
        e.info["last_observation"] = result.observation
        e.info["max_turns"] = e.env.max_turns
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
