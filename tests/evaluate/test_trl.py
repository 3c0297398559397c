"""The TRL peer (`evaluate/trl_runner.py`) sees what our runtime sees, and leaves a run folder ours reads.

Prompts must tokenize to exactly our policy's ids, the reward must equal our actor's for the same
completions, and a one-step run on the tiny model must leave a run folder the harness reads: evals
at step 0 and at the stage end, an update record with timings, and the training episodes with the
items our runtime draws. Skipped when TRL (the `[compare]` extra) is not installed.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from lifelong.envs.base import Game, Outcome
from lifelong.envs.registry import get_spec, register
from lifelong.evaluate.harness import result_from_run
from lifelong.evaluate.report import read_metrics
from lifelong.guard.gate import GuardConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.actor import Job, play
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.model.policy import ANSWER_MARKER, GenerationConfig, Policy
from lifelong.model.sampler import SampledRow
from lifelong.streams.stream import Stage, Stream, Task

pytest.importorskip("trl")

from lifelong.evaluate.trl_runner import TRLReward, answer_of, trl_prompt, trl_runner, trl_settings

NONE = GenerationConfig("none", None, 8, 1.0)
LOW = GenerationConfig("low", None, 8, 1.0)
ADD = Task.of("add", max_value=20)


def _items(n: int) -> list[tuple[int, str, str]]:
    """(seed, observation, reference answer) of n addition items."""
    env = ADD.make()
    items = []
    for seed in range(n):
        observation, info = env.reset(seed=seed)
        items.append((seed, observation, str(info["answer"])))
    return items


def test_prompt_is_our_prompt_plus_answer_prefix(tiny_policy: Policy, tokenizer: PreTrainedTokenizerBase) -> None:
    marker = tokenizer.encode(ANSWER_MARKER, add_special_tokens=False)
    for _, observation, _ in _items(6):
        prompt = trl_prompt(tiny_policy, observation, NONE)
        # TRL tokenizes a text prompt with the tokenizer's defaults (GRPOTrainer._tokenize_prompts).
        assert tokenizer(text=prompt)["input_ids"] == tiny_policy.start(observation) + marker
        assert prompt.endswith(ANSWER_MARKER)
        # With a thinking budget our policy prefills nothing, and neither does TRL's prompt.
        assert tokenizer(text=trl_prompt(tiny_policy, observation, LOW))["input_ids"] == tiny_policy.start(observation)


def _replies(answer: str) -> list[str]:
    """Completions after "Answer:" that our parser and TRL's must read alike."""
    wrong = str(int(answer) + 1)
    return [
        f" {answer}",
        f" {answer}\nbecause",
        f"  {answer} ",
        f" {wrong}",
        " banana",
        "",
        f" {answer}.",
        "\n" + answer,
    ]


def _scripted(monkeypatch: pytest.MonkeyPatch, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> None:
    """Make our policy's sampler return `texts` (in order) instead of sampling."""

    def sample(model: Any, contexts: Sequence[Sequence[int]], **_: Any) -> list[SampledRow]:
        assert len(contexts) == len(texts)
        rows = []
        for text in texts:
            ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
            rows.append(SampledRow(ids, [0.0] * len(ids), [False] * len(ids), "eos"))
        return rows

    monkeypatch.setattr("lifelong.model.policy.sample", sample)


@pytest.mark.parametrize("gen", [NONE, LOW], ids=["prefilled", "thinking"])
def test_reward_equals_our_actor(
    gen: GenerationConfig, tiny_policy: Policy, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, texts = [], []
    for seed, _, answer in _items(3):
        for reply in _replies(answer):
            jobs.append(Job(ADD.label, seed, group=str(seed)))
            # With a thinking budget the model writes the marker itself (or forgets it).
            texts.append(reply if gen is NONE else f"Let me add.\n{ANSWER_MARKER}{reply}")
    if gen is LOW:
        jobs.append(Job(ADD.label, 0))
        texts.append("I forgot the marker 7")
    _scripted(monkeypatch, tokenizer, texts)
    ours = play(tiny_policy, jobs, lambda _: ADD.make(), gen)

    reward = TRLReward(tiny_policy, lambda _: ADD.make(), gen)
    ids = [[*tokenizer.encode(t, add_special_tokens=False), tokenizer.eos_token_id] for t in texts]
    # TRL decodes each completion with skip_special_tokens=True before calling the reward.
    completions = [str(tokenizer.decode(i, skip_special_tokens=True)) for i in ids]
    theirs = reward(
        prompts=["..."] * len(jobs),
        completions=completions,
        completion_ids=ids,
        task=[j.env for j in jobs],
        seed=[j.seed for j in jobs],
        group=[j.group for j in jobs],
    )
    assert theirs == [e.reward for e in ours]
    assert 0 < sum(theirs) < len(theirs)  # both right and wrong answers were scored
    episodes, _ = reward.take()
    assert [e.success for e in episodes] == [e.success for e in ours]
    assert [e.turns[0].completion.answer for e in episodes] == [e.turns[0].completion.answer for e in ours]
    assert answer_of(" 12\nmore", NONE) == "12"


def _config(stream: Stream, **settings: Any) -> RunConfig:
    return RunConfig.for_method(
        "grpo",
        stream=stream.to_dict(),
        prompts_per_step=2,
        eval_every=0,
        answer_tokens=3,
        grpo=GRPOConfig(group_size=2),
        guard=GuardConfig(drift_prompts=2),
        **settings,
    )


def test_settings_mirror_our_update() -> None:
    from trl import GRPOConfig as TRLConfig

    stream = Stream("s", (Stage(ADD, 64),), probe_size=4)
    config = RunConfig.for_method("grpo", stream=stream.to_dict())
    args = TRLConfig(**trl_settings(config, Path("unused"), max_steps=2))
    g = config.grpo
    assert args.generation_batch_size == config.episodes_per_step == 32  # 4 prompts x 8 samples per step
    assert args.num_generations == g.group_size
    assert args.per_device_train_batch_size == 16  # what TRL always ran with (trl_runner.TRL_MICRO_BATCH)
    assert (args.learning_rate, args.beta, args.epsilon, args.epsilon_high) == (2e-4, 0.02, 0.2, 0.28)
    assert args.loss_type == "dapo" and args.scale_rewards == "group" and args.lr_scheduler_type == "constant"
    assert args.max_completion_length == config.answer_tokens and args.temperature == 1.0
    assert not args.shuffle_dataset


class Walk(Game):
    """A two-move game: multi-turn, so GRPOTrainer cannot play it."""

    name = "trl_test_walk"

    def __init__(self) -> None:
        super().__init__(max_turns=2)

    def start(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        return f"Say go twice (game {rng.randrange(10**6)}).", {"answer": "go", "solution": ["go", "go"]}

    def move(self, action: str) -> tuple[str, Outcome]:
        return "again", Outcome.WON if self._turn == 2 and action == "go" else Outcome.PLAYING


@pytest.fixture
def walk() -> Iterator[str]:
    """The game, registered for one test only (so no other test's list of environments sees it)."""
    from lifelong.envs import registry

    get_spec("add")  # load the built-in catalog first: the registry loads it only while it is empty
    register(Walk.name, Walk, multi_turn=True)
    yield Walk.name
    registry._REGISTRY.pop(Walk.name, None)


def test_tiny_run_leaves_a_run_folder_ours_reads(walk: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Stage 1 is a multi-turn game (skipped by TRL, still evaluated); stage 2 trains one step."""
    stages = (Stage(Task.of(walk), 4), Stage(Task.of("add", max_value=3), 4))
    config = _config(Stream("s", stages, probe_size=1), model=str(tiny_model_dir))
    notes: list[str] = []
    run_dir = tmp_path / "trl"
    trl_runner(str(tiny_model_dir), notes.append)(config, run_dir)

    assert json.loads((run_dir / "config.json").read_text())["method"] == "trl"
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if r["type"] == "eval"] == [0, 1, 2]
    assert any(r["type"] == "skipped" and r["stage"] == walk for r in records)
    assert any("skipped" in n for n in notes)
    (update,) = [r for r in records if r["type"] == "update"]
    assert update["step"] == 2 and update["episodes"] == 4
    assert update["time/act_s"] > 0 and update["time/learn_s"] > 0
    with sqlite3.connect(run_dir / "experience.sqlite") as db:
        rows = db.execute("SELECT seed, turns FROM episodes WHERE step = 2 AND split = 'train'").fetchall()
    # The same items our runtime draws for that step, each sampled group_size times.
    runtime = Runtime(config, Policy(*_tiny(tiny_model_dir)), tmp_path / "ours")
    assert sorted(seed for seed, _ in rows) == sorted(j.seed for j in runtime.jobs_for(runtime.schedule[1]))
    # The prefilled "Answer:" is part of the completion, never a training target (as in ours).
    assert all(json.loads(turns)[0]["completion"]["loss_mask"][0] == 0 for _, turns in rows)
    result = result_from_run("trl", run_dir)
    assert result.R[1] == result.R[0]  # the skipped stage left the weights as they were
    assert result.episodes == 4 and result.episodes_per_min > 0

    trl_runner(str(tiny_model_dir), notes.append)(config, run_dir)  # a finished folder is reused
    assert any("reusing" in n for n in notes)


def _tiny(folder: Path) -> tuple[Any, Any]:
    from lifelong.model.loading import load_model

    model, tokenizer, _ = load_model(str(folder))
    return model, tokenizer
