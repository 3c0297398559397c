"""The world model: given a game's state and a move, write what the game says next.

It is a language model of its own (a copy of the pretrained base with its own LoRA adapter), so
learning how games respond never moves the policy's weights. It learns with the SFT learner the
run path already has (learn/sft.py), on the agent's real moves (world/transitions.py): the target
is the game's reply as text, its first line the outcome ("playing, reward 0.00" or "over, reward
1.00") and after it the game's next message. Imagining is greedy decoding of that reply.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lifelong.errors import ConfigError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.learn.sft import SFTConfig, SFTLearner
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Batch, Sample, UpdateReport
from lifelong.world.transitions import GameState, Outcome, Transition

INSTRUCTIONS = (
    "You are the engine of a text game. Write the game's reply to the player's move: first "
    "'playing' or 'over' and the reward the move earned, then the game's message."
)
_OUTCOME = re.compile(r"^\s*(playing|over),\s*reward\s*(-?\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class WorldModelConfig:
    """How the world model sees a state and learns. Built-in games restate what a player needs in
    every message, so by default only the last message is shown; raise `history_turns` for games
    whose messages do not."""

    history_turns: int = 0
    prediction_tokens: int = 96  # the longest reply it may imagine
    learning_rate: float = 5e-4
    batch_size: int = 16  # moves per update
    micro_batch: int = 8

    def __post_init__(self) -> None:
        if self.history_turns < 0 or self.prediction_tokens < 8:
            raise ConfigError("history_turns must be >= 0 and prediction_tokens >= 8", "the defaults are 0 and 96")
        if self.batch_size < 1 or self.micro_batch < 1:
            raise ConfigError("batch_size and micro_batch must be >= 1", "the defaults are 16 and 8")


def state_prompt(state: GameState, action: str) -> str:
    """The world model's question: the game, the moves so far, the last message and the move."""
    lines = [INSTRUCTIONS, f"Game: {state.env}"]
    for observation, earlier in state.history:
        lines += [f"Game says:\n{observation}", f"Player: {earlier}"]
    move = f"move {state.turn} of {state.max_turns}" if state.max_turns else f"move {state.turn}"
    lines += [f"Game says:\n{state.observation}", f"Player ({move}): {action}"]
    return "\n".join(lines)


def outcome_text(outcome: Outcome) -> str:
    """The reply the world model learns to write for `outcome` (whose observation is known)."""
    status = "over" if outcome.done else "playing"
    return f"{status}, reward {outcome.reward:.2f}\n{(outcome.observation or '').strip()}"


def parse_outcome(text: str) -> Outcome:
    """An imagined reply as an `Outcome`. A reply without a readable outcome line is a game that
    goes on and pays nothing, all of its text the message."""
    first, _, rest = text.strip().partition("\n")
    found = _OUTCOME.match(first)
    if found is None:
        return Outcome(text.strip(), 0.0, False)
    return Outcome(rest.strip(), float(found.group(2)), found.group(1) == "over")


def world_sample(policy: Policy, transition: Transition) -> Sample:
    """A real move as a teacher-forced target for `policy`: the world model's question in plain chat,
    the game's reply and the end of the turn. The world model learns from these; with the
    auxiliary objective the policy does too (loop/world.py)."""
    prompt = policy.chat_start(state_prompt(transition.state, transition.action))
    reply = policy.tokenizer.encode(outcome_text(transition.outcome), add_special_tokens=False)
    ids = (*reply, int(policy.tokenizer.eos_token_id))
    return Sample(tuple(prompt), ids, (0.0,) * len(ids), (1,) * len(ids), 1.0)


def world_targets(policy: Policy, moves: Sequence[Transition]) -> list[Sample]:
    """`world_sample` of every move whose next message was recorded (a reply is written whole)."""
    return [world_sample(policy, t) for t in moves if t.outcome.observation is not None]


class WorldModel:
    """A policy of its own that writes the game's reply; `learn` fits it to real moves, `imagine`
    predicts outcomes of moves never taken."""

    def __init__(self, policy: Policy, config: WorldModelConfig = WorldModelConfig()) -> None:
        self.policy = policy
        self.config = config
        self.learner = SFTLearner(policy, SFTConfig(learning_rate=config.learning_rate, micro_batch=config.micro_batch))

    def learn(self, moves: Sequence[Transition], steps: int, rng: random.Random) -> list[UpdateReport]:
        """`steps` updates on the moves' targets (`world_targets`, then `fit`)."""
        return self.fit(world_targets(self.policy, moves), steps, rng)

    def fit(self, samples: Sequence[Sample], steps: int, rng: random.Random) -> list[UpdateReport]:
        """`steps` updates on batches drawn from `samples` without replacement (reshuffled each pass)."""
        if not samples:
            raise ConfigError("no moves with a recorded reply to learn from", "play a multi-turn game first")
        order: list[int] = []
        reports = []
        for _ in range(steps):
            if len(order) < self.config.batch_size:
                order += rng.sample(range(len(samples)), len(samples))
            picked, order = order[: self.config.batch_size], order[self.config.batch_size :]
            batch = Batch(tuple(samples[i] for i in picked), len(picked), 0, 0.0, 0.0)
            reports.append(self.learner.update(batch))
        return reports

    def imagine(self, states: Sequence[GameState], actions: Sequence[str]) -> list[Outcome]:
        """The predicted outcome of each move, greedy and batched."""
        if len(states) != len(actions):
            raise ValueError(f"{len(states)} states for {len(actions)} actions")
        if not states:
            return []
        contexts = [self.policy.chat_start(state_prompt(s, a)) for s, a in zip(states, actions, strict=True)]
        gen = GenerationConfig(protocol=False, temperature=0.0, answer_tokens=self.config.prediction_tokens)
        return [parse_outcome(c.answer) for c in self.policy.chat(contexts, gen)]

    # ---- saving -----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """The adapter and optimizer in `folder` (a checkpoint ring: written atomically, verified)."""
        ring = CheckpointRing(folder, keep=1)
        state = {"good": True, "history_turns": self.config.history_turns, "kind": "world_model"}
        return ring.save(self.policy, self.learner.optimizer, self.learner.step, state)

    def load(self, folder: str | Path) -> None:
        """The newest world model saved in `folder`; a CheckpointError says what is wrong."""
        ring = CheckpointRing(folder)
        checkpoint = ring.latest_good()
        if checkpoint is None or checkpoint.state.get("kind") != "world_model":
            raise ConfigError(
                f"no world model in {folder}",
                "train one first: benchmarks/world_model.py leaves one in world/ of every run folder",
            )
        ring.restore(checkpoint, self.policy, self.learner.optimizer)
        self.learner.step = checkpoint.step


def new_world_model(
    model: str | None = None, config: WorldModelConfig = WorldModelConfig(), seed: int = 0
) -> WorldModel:
    """A fresh world model: its own copy of the pretrained `model` (None: the embedded default)
    with a new LoRA adapter, so the policy it serves never shares a weight with it. Its adapter
    is initialised from a generator of its own: making one leaves every other draw of the run as
    it would have been."""
    from lifelong.model.loading import load_model

    lm, tokenizer, name = load_model(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = Policy(lm, tokenizer, name=f"{name} world model")
    return WorldModel(policy, config)
