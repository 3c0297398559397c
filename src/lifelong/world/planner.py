"""Planning at decision time: propose moves, imagine where they lead, play the best one.

Model-predictive control with the learnt world model (world/model.py). For each live game the
policy proposes `width` moves: its greedy move first, then samples. The world model imagines each
move's outcome; with `depth` > 1 the policy answers the imagined message greedily and the world
model imagines again, up to `depth` moves ahead. A line of play is worth its imagined rewards,
discounted by how far ahead they come, plus a small bonus when its first imagined message is one
this game has not shown yet (a move that changes nothing, or returns to a place already seen,
teaches nothing and wins nothing). The greedy move wins ties, so planning departs from the policy
only where the world model foresees something better.

The planner never touches the real environment: it returns one completion per game, and the actor
plays it (loop/actor.py). The width and depth follow the reasoning effort (`plan_for_effort`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from lifelong.envs.base import normalize_word
from lifelong.errors import ConfigError
from lifelong.model.policy import EFFORT_BUDGETS, GenerationConfig, Policy
from lifelong.types import Completion
from lifelong.world.model import WorldModel
from lifelong.world.transitions import GameState, Outcome, same_observation


@dataclass(frozen=True)
class PlanConfig:
    """How wide and deep to look. `width` 1 is no planning at all (the greedy move is played)."""

    width: int = 4  # moves proposed per real move
    depth: int = 1  # moves imagined ahead along each proposal (the proposal itself included)
    discount: float = 0.9  # an imagined reward k moves ahead counts discount**k
    novelty: float = 0.05  # bonus for a first imagined message this game has not shown yet
    temperature: float = 1.0  # of the proposals after the greedy one

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ConfigError("width and depth must be >= 1", "width 1 plays the greedy move without planning")
        if not 0.0 < self.discount <= 1.0 or self.novelty < 0 or self.temperature <= 0:
            raise ConfigError("discount must be in (0, 1], novelty >= 0, temperature > 0", "the defaults work")


# Width and depth per reasoning effort: more thought means imagining more moves further ahead.
PLAN_BY_EFFORT = {"none": (1, 1), "low": (4, 1), "medium": (4, 2), "high": (8, 3)}


def plan_for_effort(effort: str) -> PlanConfig:
    """The plan a reasoning effort pays for (`none`: no planning)."""
    if effort not in EFFORT_BUDGETS:
        raise ConfigError(f"unknown reasoning_effort {effort!r}", f"use one of {', '.join(EFFORT_BUDGETS)}")
    width, depth = PLAN_BY_EFFORT[effort]
    return PlanConfig(width=width, depth=depth)


@dataclass(frozen=True)
class Line:
    """One proposed move and the moves imagined after it, each with its imagined outcome."""

    actions: tuple[str, ...]
    outcomes: tuple[Outcome, ...]
    value: float


@dataclass(frozen=True)
class Plan:
    """What the planner considered for one real move, and which line it played."""

    state: GameState
    lines: tuple[Line, ...]
    chosen: int

    @property
    def imagined_moves(self) -> int:
        return sum(len(line.outcomes) for line in self.lines)


def line_value(state: GameState, outcomes: Sequence[Outcome], config: PlanConfig) -> float:
    """Discounted imagined reward, plus the novelty bonus for a first message not seen before."""
    value = sum(config.discount**k * o.reward for k, o in enumerate(outcomes))
    first = outcomes[0]
    seen = [state.observation, *(observation for observation, _ in state.history)]
    if not first.done and not any(same_observation(first.observation, s) for s in seen):
        value += config.novelty
    return value


class Planner:
    """Chooses each real move by imagining; `decide` plugs into the actor (loop/actor.Decide).
    `on_plan` sees every plan as it is made (`lifelong play --show-plan` prints them)."""

    def __init__(
        self,
        policy: Policy,
        world: WorldModel,
        config: PlanConfig = PlanConfig(),
        generator: torch.Generator | None = None,
        on_plan: Callable[[Plan], None] | None = None,
    ) -> None:
        self.policy = policy
        self.world = world
        self.config = config
        self.generator = generator
        self.on_plan = on_plan
        self.plans = 0
        self.imagined_moves = 0  # world-model calls, the planner's compute beside its success

    def _trim(self, state: GameState) -> GameState:
        keep = self.world.config.history_turns
        return replace(state, history=state.history[-keep:] if keep else ())

    def decide(
        self, contexts: Sequence[Sequence[int]], states: Sequence[GameState], gen: GenerationConfig
    ) -> list[Completion]:
        """One completion per game: the move whose imagined line of play is worth most."""
        cfg = self.config
        greedy = self.policy.respond(contexts, replace(gen, temperature=0.0), self.generator)
        if cfg.width == 1:
            return greedy
        repeated = [c for c in contexts for _ in range(cfg.width - 1)]
        sampled = self.policy.respond(repeated, replace(gen, temperature=cfg.temperature), self.generator)
        # Each game's distinct proposals, greedy first (a duplicate answer is the same move).
        proposals: list[list[Completion]] = []
        for i, first in enumerate(greedy):
            mine, seen = [first], {normalize_word(first.answer)}
            for c in sampled[i * (cfg.width - 1) : (i + 1) * (cfg.width - 1)]:
                if normalize_word(c.answer) not in seen:
                    seen.add(normalize_word(c.answer))
                    mine.append(c)
            proposals.append(mine)
        lines = self._imagine_lines(contexts, states, proposals, replace(gen, temperature=0.0))
        chosen = []
        for i, state in enumerate(states):
            values = [line.value for line in lines[i]]
            best = max(range(len(values)), key=lambda k: (values[k], -k))  # ties: the earliest, greedy first
            plan = Plan(state, tuple(lines[i]), best)
            self.plans += 1
            self.imagined_moves += plan.imagined_moves
            if self.on_plan is not None:
                self.on_plan(plan)
            chosen.append(proposals[i][best])
        return chosen

    def _imagine_lines(
        self,
        contexts: Sequence[Sequence[int]],
        states: Sequence[GameState],
        proposals: Sequence[Sequence[Completion]],
        greedy: GenerationConfig,
    ) -> list[list[Line]]:
        """Roll every proposal `depth` moves ahead in the world model, all games batched; the
        policy's imagined replies after the first are `greedy`."""
        keep = self.world.config.history_turns
        # One rollout per (game, proposal): its context, its imagined state, what it has seen.
        rollouts = [(i, k) for i, mine in enumerate(proposals) for k in range(len(mine))]
        context = {(i, k): list(contexts[i]) for i, k in rollouts}
        state = {(i, k): self._trim(states[i]) for i, k in rollouts}
        move = {(i, k): proposals[i][k] for i, k in rollouts}
        actions: dict[tuple[int, int], list[str]] = {r: [] for r in rollouts}
        outcomes: dict[tuple[int, int], list[Outcome]] = {r: [] for r in rollouts}
        live = list(rollouts)
        for depth in range(self.config.depth):
            if depth > 0:  # the policy answers the imagined message, greedily
                replies = self.policy.respond([context[r] for r in live], greedy)
                move.update(zip(live, replies, strict=True))
            imagined = self.world.imagine([state[r] for r in live], [move[r].answer for r in live])
            going = []
            for r, outcome in zip(live, imagined, strict=True):
                actions[r].append(move[r].answer)
                outcomes[r].append(outcome)
                if not outcome.done:
                    context[r] = self.policy.extend(context[r], move[r], outcome.observation or "")
                    state[r] = state[r].after(move[r].answer, outcome.observation or "", keep)
                    going.append(r)
            live = going
            if not live:
                break
        lines: list[list[Line]] = [[] for _ in proposals]
        for r in rollouts:  # in order: game by game, greedy proposal first
            value = line_value(states[r[0]], outcomes[r], self.config)
            lines[r[0]].append(Line(tuple(actions[r]), tuple(outcomes[r]), value))
        return lines


def describe_plan(plan: Plan) -> str:
    """A plan as a person reads it: each proposed move, what the world model imagined it leads to,
    its value, and an arrow at the move played."""

    def said(outcome: Outcome) -> str:
        first = (outcome.observation or "").strip().splitlines()
        status = f"over, reward {outcome.reward:.2f}" if outcome.done else "playing"
        return f"[{status}] {' / '.join(first[:3])}" if first else f"[{status}]"

    out = [f"imagining move {plan.state.turn}" + (f" of {plan.state.max_turns}" if plan.state.max_turns else "")]
    for k, line in enumerate(plan.lines):
        mark = "->" if k == plan.chosen else "  "
        steps = "; then ".join(f"{a!r} => {said(o)}" for a, o in zip(line.actions, line.outcomes, strict=True))
        out.append(f" {mark} {steps}  (value {line.value:.2f})")
    return "\n".join(out)
