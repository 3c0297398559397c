"""A run on a PostgreSQL store gives the same results as on SQLite, for the same seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import make_tiny_model
from transformers import PreTrainedTokenizerBase

from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import LoraSettings, Policy
from lifelong.streams.stream import Stage, Stream, Task

pytest.importorskip("psycopg")


def _run(tokenizer: PreTrainedTokenizerBase, run_dir: Path, store: str | None) -> tuple[list, list]:
    import torch

    torch.manual_seed(0)
    policy = Policy(make_tiny_model(tokenizer), tokenizer, lora=LoraSettings(rank=4, alpha=8))
    stream = Stream("t", (Stage(Task.of("tests.support_envs:coin"), 24),), probe_size=4)
    config = RunConfig(
        stream=stream.to_dict(), store=store, prompts_per_step=2, eval_every=0, answer_tokens=3,
        grpo=GRPOConfig(group_size=4),
    )  # fmt: skip
    runtime = Runtime(config, policy, run_dir)
    runtime.run()
    stored = runtime.store.episodes(run_id=run_dir.name)
    episodes = [(e.seed, e.turns[0].completion.token_ids, e.reward) for e in stored]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [(r["step"], round(r.get("loss/policy", 0.0), 5)) for r in records if r["type"] == "update"]
    return episodes, updates


def test_postgres_and_sqlite_runs_agree(pg_url: str, tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    on_sqlite = _run(tokenizer, tmp_path / "a" / "run", None)
    on_postgres = _run(tokenizer, tmp_path / "b" / "run", pg_url)
    assert on_sqlite[0] and on_sqlite == on_postgres
    with ExperienceStore(pg_url) as store:  # the episodes really are in PostgreSQL
        assert store.count(run_id="run") == len(on_postgres[0])
