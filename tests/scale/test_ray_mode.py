"""The Ray mode on local Ray (2 CPUs, tiny model): end to end through the CLI, the same learning
signal as the single-process mode, and staleness beyond the bound refused.

Ray takes seconds to start, so the module shares one session; each run kills its own actors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lifelong.cli import main
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.actor import Job
from lifelong.loop.runtime import RunConfig, RunSummary, Runtime
from lifelong.memory.store import ExperienceStore
from lifelong.model.loading import load_model
from lifelong.model.policy import Policy
from lifelong.scale.ray_actor import RayActor, RolloutWorker
from lifelong.scale.ray_run import RayConfig, run_on_ray, start_ray
from lifelong.streams.stream import Stage, Stream, Task

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lifelong[ray]' (make setup does)")

COIN = "tests.support_envs:coin"


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    started = start_ray(RayConfig(workers=2, object_store_mb=128))
    yield
    if started:
        ray.shutdown()


def _records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def _train_items(run_dir: Path, step: int) -> list[tuple[str, int, str, str]]:
    episodes = ExperienceStore(run_dir / "experience.sqlite").episodes(run_id=run_dir.name, step=step, split="train")
    return sorted((e.env, e.seed, e.group, e.turns[0].completion.answer) for e in episodes)


def test_ray_cli_run_gives_the_single_process_json_with_bounded_staleness(
    ray_session: None, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fp32 sampling: a stale weight then shows as mismatch, not hidden in bf16's rounding
    args = ["run", "--model", str(tiny_model_dir), "--tasks", COIN, "--episodes", "96", "--probe-size", "4",
            "--runs-dir", str(tmp_path), "--run-id", "r", "--quiet", "--threads", "1", "--json",
            "--ray", "--ray-workers", "2", "--sampler-precision", "float32"]  # fmt: skip
    assert main(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    single_process_keys = {"model", "tasks", "episodes", "before", "after", "minutes"}  # as tests/test_cli.py
    assert set(last) == set(RunSummary.__dataclass_fields__) == single_process_keys
    assert last["tasks"] == [COIN] and last["episodes"] == 96 and set(last["before"]) == {COIN}
    run = tmp_path / "r"
    assert (run / "report.md").is_file() and (run / "checkpoints" / "step-000003").is_dir()

    # Every step learned from episodes at most max_staleness=1 update older than the learner.
    version = 0  # the learner's version before step 1's update
    for update in (u for u in _records(run) if u["type"] == "update"):
        episodes = ExperienceStore(run / "experience.sqlite").episodes(run_id="r", step=update["step"], split="train")
        assert {version - e.adapter_version for e in episodes} <= {0, 1}
        version = update["adapter_version"]
    rollouts = _records(run, "rollouts.jsonl")
    assert any(r["prefetched"] for r in rollouts)  # sampling overlapped learning
    checked = [r["sampler/logprob_mismatch"] for r in rollouts if "sampler/logprob_mismatch" in r]
    assert checked and max(checked) < 1e-4  # workers sampled with the learner's weights, not stale ones


def _coin_config(model_dir: Path) -> RunConfig:
    stream = Stream("t", (Stage(Task.of(COIN), 32),), probe_size=4)
    return RunConfig(
        stream=stream.to_dict(),
        model=str(model_dir),
        prompts_per_step=2,
        eval_every=2,
        answer_tokens=3,
        grpo=GRPOConfig(group_size=4, learning_rate=1e-3),
        # the local run's Policy samples and learns in fp32: the same tokens and losses bit for bit
        sampler_precision="float32",
        learner_precision="float32",
    )


def test_one_on_policy_worker_gives_the_single_process_learning_signal(
    ray_session: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Same seeds, max_staleness 0, one worker: the worker holds the learner's adapters of the
    current version and continues the run's own generator, so it draws the very tokens the
    single-process run draws. Items, answers, rewards and adapter versions must be equal; losses
    within 1e-4 relative, since the same float arithmetic runs in other processes whose thread pools
    may order reductions differently (that moves low bits, not a sampled token)."""
    config = _coin_config(tiny_model_dir)
    threads = torch.get_num_threads()
    torch.manual_seed(config.seed)  # the Ray learner seeds the LoRA initialisation the same way
    model, tokenizer, name = load_model(config.model)
    local = Runtime(config, Policy(model, tokenizer, name=name, lora=config.lora), tmp_path / "local").run()
    ray_config = RayConfig(workers=1, max_staleness=0, worker_threads=threads)
    remote = run_on_ray(config, tmp_path / "ray", ray_config, threads=threads)

    assert (remote.tasks, remote.episodes, remote.before, remote.after) == (
        local.tasks,
        local.episodes,
        local.before,
        local.after,
    )
    a = [r for r in _records(tmp_path / "local") if r["type"] == "update"]
    b = [r for r in _records(tmp_path / "ray") if r["type"] == "update"]
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert (x["step"], x["adapter_version"], x["applied"]) == (y["step"], y["adapter_version"], y["applied"])
        assert x["reward/mean"] == y["reward/mean"]
        assert _train_items(tmp_path / "local", x["step"]) == _train_items(tmp_path / "ray", y["step"])
        for key in ("loss/policy", "kl/ref", "policy/entropy", "grad/norm"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    assert any(x["applied"] for x in a)  # the comparison covered real updates
    assert all(not r["prefetched"] for r in _records(tmp_path / "ray", "rollouts.jsonl"))


def test_prefetched_episodes_beyond_max_staleness_are_refused_and_sampled_again(
    ray_session: None, tiny_model_dir: Path
) -> None:
    config = _coin_config(tiny_model_dir)
    worker = ray.remote(RolloutWorker).options(num_cpus=1).remote()
    try:
        ray.get(worker.setup.remote(config.to_dict()))
        model, tokenizer, name = load_model(config.model)
        policy = Policy(model, tokenizer, name=name, lora=config.lora)
        jobs = [Job(COIN, seed, group=str(seed)) for seed in (1, 2) for _ in range(4)]
        gen = config.generation(1.0)

        synchronous = RayActor(policy, [worker], max_staleness=0)
        synchronous.prefetch(jobs, gen)
        assert synchronous._ahead is None  # on-policy: nothing is sampled ahead

        actor = RayActor(policy, [worker], max_staleness=1)
        actor.prefetch(jobs, gen)
        policy.version += 1  # the learner updated once meanwhile: within the bound
        assert {e.adapter_version for e in actor.play(jobs, gen)} == {0}
        actor.prefetch(jobs, gen)
        policy.version += 2  # twice (or an update and a rollback): beyond it
        assert {e.adapter_version for e in actor.play(jobs, gen)} == {3}
        assert actor.stats["total/prefetched"] == 8 and actor.stats["total/refused_stale"] == 8
        assert actor.stats["total/broadcasts"] == 3  # versions 0, 1 and 3, each sent once
    finally:
        ray.kill(worker)
