"""Staleness bound, job sharding and the rollout worker, without Ray (tiny model, seconds)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lifelong.errors import ConfigError, ModelLoadError
from lifelong.loop.actor import Job, play
from lifelong.loop.runtime import RunConfig
from lifelong.model.adapters import trainable
from lifelong.model.loading import load_model
from lifelong.model.policy import LoraSettings, Policy
from lifelong.scale.ray_actor import CarriedError, RolloutWorker, carry_errors, shard, task_map
from lifelong.scale.ray_run import RayConfig
from lifelong.scale.sync import StalenessError, adapter_state, check_staleness, logprob_mismatch, within_staleness
from lifelong.streams.stream import Stage, Stream, Task

COIN = "tests.support_envs:coin"


def coin_config(model_dir: Path) -> RunConfig:
    stream = Stream("t", (Stage(Task.of(COIN), 8),), probe_size=4)
    return RunConfig(
        stream=stream.to_dict(),
        model=str(model_dir),
        answer_tokens=3,
        lora=LoraSettings(rank=4, alpha=8),
        sampler_precision="float32",  # the learner's own precision: exact agreement is what is tested
        learner_precision="float32",
    )


def test_staleness_is_the_lag_behind_the_learner_within_the_bound() -> None:
    assert within_staleness(5, current=5, max_staleness=0)
    assert not within_staleness(4, current=5, max_staleness=0)
    assert within_staleness(4, current=5, max_staleness=1)
    assert not within_staleness(3, current=5, max_staleness=1)
    assert not within_staleness(6, current=5, max_staleness=1)  # weights the learner never had


def test_episodes_beyond_the_bound_are_refused() -> None:
    check_staleness([4, 5, 5], current=5, max_staleness=1)
    with pytest.raises(StalenessError, match=r"versions \[3\] reached the learner at version 5"):
        check_staleness([3, 4, 5], current=5, max_staleness=1)


def test_shards_are_balanced_and_never_split_a_group() -> None:
    jobs = [Job("a", g, group=f"1:{g}") for g in range(3) for _ in range(4)]
    shards = shard(jobs, 2)
    assert [len(s) for s in shards] == [8, 4]
    assert [j for s in shards for j in s] == jobs  # order kept: results line up with jobs
    assert all(len({j.group for j in s}) == len(s) // 4 for s in shards)
    assert len(shard(jobs, 5)) == 3  # never more shards than groups
    probes = [Job("a", i, split="probe") for i in range(5)]  # ungrouped jobs spread one by one
    assert [len(s) for s in shard(probes, 2)] == [3, 2]


def test_a_worker_samples_exactly_what_the_learner_would_with_the_weights_it_is_sent(tiny_model_dir: Path) -> None:
    config = coin_config(tiny_model_dir)
    torch.manual_seed(0)
    model, tokenizer, name = load_model(config.model)
    learner = Policy(model, tokenizer, name=name, lora=config.lora)
    with torch.no_grad():  # trained adapters (LoRA B starts at 0, where any adapter looks the same)
        for p in trainable(learner):
            p.add_(0.3 * torch.randn_like(p))
    learner.version = 3
    worker = RolloutWorker()
    assert worker.setup(config.to_dict()) == name
    jobs = [Job(COIN, 11, group="1:0")] * 4 + [Job(COIN, 12, group="1:1")] * 4
    gen = config.generation(1.0)
    with pytest.raises(RuntimeError, match="holds adapter version -1, asked for 3"):
        worker.play(jobs, gen, 3, None, ("seed", 0))  # never sample with weights it was not sent

    generator = torch.Generator().manual_seed(7)
    episodes, state = worker.play(jobs, gen, 3, adapter_state(learner), ("state", generator.get_state()))
    tasks = task_map(config.stream)
    local = play(learner, jobs, lambda label: tasks[label].make(), gen, generator)
    assert [e.turns[0].completion for e in episodes] == [e.turns[0].completion for e in local]
    assert torch.equal(state, generator.get_state())  # the run's random stream continues where it left
    assert {e.adapter_version for e in episodes} == {3}
    mismatch = logprob_mismatch(learner, episodes, temperature=1.0)
    assert mismatch is not None and mismatch["sampler/logprob_mismatch"] < 1e-5


def test_ray_settings_that_cannot_work_say_the_fix() -> None:
    with pytest.raises(ConfigError, match="--ray-workers"):
        RayConfig(workers=0)
    with pytest.raises(ConfigError, match="worker_gpus"):
        RayConfig(sampler="vllm")  # vLLM workers without a GPU each
    with pytest.raises(ConfigError, match="on-policy"):
        RayConfig(max_staleness=-1)


def test_user_errors_cross_the_process_boundary_as_themselves() -> None:
    """Ray pickles an actor's exception; a LifelongError would not unpickle, so it travels carried."""
    with pytest.raises(CarriedError) as caught, carry_errors():
        raise ModelLoadError("model path /x does not exist", "pass a model folder")
    back = pickle.loads(pickle.dumps(caught.value)).restore()
    assert type(back) is ModelLoadError
    assert (back.problem, back.fix) == ("model path /x does not exist", "pass a model folder")
