"""`VLLMActor`: the runtime's Actor on one GPU, sampling with vLLM while the learner trains.

The learner keeps its trainable policy (torch + LoRA) as in every mode; the actor owns a
`VLLMPolicy` (model/vllm_sampler.py) on the same machine. Before each call it compares the
version vLLM holds with the learner's `Policy.version` and, when behind, hot-loads the adapters of
the current version (written to `runs/<id>/vllm-adapters/v<version>/`). Calls are synchronous, so
every episode is sampled with the learner's current adapters (staleness 0); the only gap between
sampler and learner is the engines' numerics, measured on each sampled call as
`sampler/logprob_mismatch` in `rollouts.jsonl` and corrected by the learner's importance ratio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lifelong.loop.actor import Job, play
from lifelong.loop.runtime import Progress, RunConfig, Runtime
from lifelong.model.policy import GenerationConfig, Policy, require_lora
from lifelong.model.vllm_sampler import Engine, VLLMPolicy
from lifelong.scale.ray_actor import task_map
from lifelong.scale.sync import adapter_state, check_staleness, write_rollout
from lifelong.types import Episode


class VLLMActor:
    """Plays jobs on a vLLM engine with the learner's adapters, loaded by version."""

    def __init__(
        self,
        policy: Policy,
        config: RunConfig,
        run_dir: Path,
        generator: torch.Generator | None = None,
        mismatch_samples: int = 4,
        engine: Engine | None = None,
        **engine_options: Any,
    ) -> None:
        self.policy = policy  # the learner's own, trainable policy
        self.sampler = VLLMPolicy.from_model(
            config.model, config.lora, run_dir / "vllm-adapters", engine=engine, seed=config.seed, **engine_options
        )
        self.tasks = task_map(config.stream)
        self.generator = generator or torch.Generator().manual_seed(config.seed)
        self.log_path = run_dir / "rollouts.jsonl"
        self.mismatch_samples = mismatch_samples
        self.loads = 0

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        t0 = time.time()
        if self.sampler.version != self.policy.version:
            self.sampler.load_adapter_state(adapter_state(self.policy), self.policy.version)
            self.loads += 1
        episodes = play(self.sampler, jobs, lambda label: self.tasks[label].make(), gen, self.generator)
        check_staleness((e.adapter_version for e in episodes), self.policy.version, 0)
        write_rollout(
            self.log_path,
            self.policy,
            episodes,
            gen,
            self.mismatch_samples,
            sampler="vllm",
            wait_s=round(time.time() - t0, 4),
            sampled_tokens=sum(e.num_sampled_tokens for e in episodes),
            **{"total/adapter_loads": self.loads},
        )
        return episodes

    def prefetch(self, jobs: Sequence[Job], gen: GenerationConfig) -> None:
        pass  # synchronous: every call samples with the learner's current adapters


def vllm_runtime(
    config: RunConfig, policy: Policy, run_dir: Path, progress: Progress | None = None, **options: Any
) -> Runtime:
    """The single-process Runtime with a VLLMActor that draws from the run's own generator."""
    require_lora(config.unit, "vLLM")
    run_dir.mkdir(parents=True, exist_ok=True)
    actor = VLLMActor(policy, config, run_dir, **options)
    runtime = Runtime(config, policy, run_dir, progress, actor=actor)
    actor.generator = runtime.generator  # restored on resume, like the single-process sampler's
    return runtime
