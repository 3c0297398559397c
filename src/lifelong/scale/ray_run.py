"""`run_on_ray`: the whole runtime inside a Ray learner actor, episodes from rollout-worker actors.

The learner actor builds exactly what `lifelong run` builds in one process (model, LoRA policy,
`Runtime` with its learner, guard, store and checkpoints) and differs in one argument: its Actor is
a `RayActor`. So the config, the run folder and the summary are those of the single-process mode,
and there is no second copy of the algorithm to drift apart.

Placement. The learner is pinned to the node that launched the run, so `runs/<id>/` is written on
the launching machine; rollout workers go wherever the cluster has room (`worker_gpus` > 0 asks for
GPU nodes). Locally, Ray is started small: no dashboard, a small object store (only adapters and
episodes travel through it), and logical CPUs for the learner plus the workers. A Ray started here
is shut down here; one the caller started (a test, a notebook) is left running, and only the actors
made here are killed.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.errors import ConfigError
from lifelong.loop.runtime import Progress, RunConfig, RunSummary
from lifelong.model.policy import require_lora
from lifelong.scale.ray_actor import CarriedError, RolloutWorker, carry_errors

SAMPLERS = ("torch", "vllm")


@dataclass(frozen=True)
class RayConfig:
    """How to run on Ray. Defaults suit one 2-core machine: two workers, one update of staleness."""

    address: str | None = None  # None: start Ray on this machine; "auto" or "ray://head:10001": join a cluster
    workers: int = 2  # rollout-worker actors, each with its own model copy
    max_staleness: int = 1  # updates a prefetched episode may lag the learner; 0 = synchronous, on-policy
    worker_cpus: float = 1.0  # Ray resources per worker
    worker_gpus: float = 0.0  # > 0 places workers on GPU nodes (with sampler="vllm")
    learner_cpus: float = 1.0
    worker_threads: int = 1  # torch threads per worker
    sampler: str = "torch"  # "torch" (the KV-cache sampler) or "vllm" (GPU workers only)
    object_store_mb: int = 256  # local Ray only; the adapters of a 135M model are ~20 MB per version
    mismatch_samples: int = 4  # completions per call the learner re-scores to measure sampler mismatch
    log_to_driver: bool = False  # forward workers' stdout/stderr (keeps `--json` stdout clean when off)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"ray workers must be >= 1, got {self.workers}", "use --ray-workers 2 on one machine")
        if self.max_staleness < 0:
            raise ConfigError("max_staleness must be >= 0", "0 = on-policy; 1 overlaps sampling with learning")
        if self.worker_threads < 1:
            raise ConfigError("worker_threads must be >= 1", "one thread per worker core")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}", f"use one of {', '.join(SAMPLERS)}")
        if self.sampler == "vllm" and self.worker_gpus <= 0:
            raise ConfigError("the vllm sampler needs GPU workers", "set worker_gpus (e.g. 1) with sampler='vllm'")
        if self.object_store_mb < 80:
            raise ConfigError(f"object_store_mb {self.object_store_mb} is below Ray's minimum", "use at least 80")

    @property
    def local(self) -> bool:
        return self.address is None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "Ray is not installed", "pip install 'lifelong[ray]' (CPU-only; `make setup` does it)"
        ) from exc
    return ray


def start_ray(config: RayConfig) -> bool:
    """Connect to Ray as `config` says unless already connected; True if this call started it."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if config.local:
        # A CLI run should not phone home; the user can still opt in with the variable set to 1.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        needed = config.workers * config.worker_cpus + config.learner_cpus
        ray.init(
            num_cpus=max(os.cpu_count() or 1, math.ceil(needed)),  # logical: the learner overlaps workers
            include_dashboard=False,
            object_store_memory=config.object_store_mb * 2**20,
            log_to_driver=config.log_to_driver,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=config.address, log_to_driver=config.log_to_driver, logging_level=logging.WARNING)
    return True


class _RecordingProgress:
    """The learner's Progress: records calls for the driver to replay on its own display."""

    def __init__(self) -> None:
        self._events: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def _add(self, name: str, *args: Any) -> None:
        with self._lock:
            self._events.append((name, args))

    def start(self, total_episodes: int, done: int) -> None:
        self._add("start", total_episodes, done)

    def advance(self, episodes: int, reward: float, stage: str) -> None:
        self._add("advance", episodes, reward, stage)

    def note(self, text: str) -> None:
        self._add("note", text)

    def drain(self) -> list[tuple[str, tuple[Any, ...]]]:
        with self._lock:
            events, self._events = self._events, []
        return events


class Learner:
    """The learner actor's body: the single-process runtime with a RayActor (a plain class; made
    remote with max_concurrency=2 so the driver can read progress while `run` is busy)."""

    def __init__(self) -> None:
        self.progress = _RecordingProgress()
        self.runtime: Any = None

    def setup(
        self, config: dict[str, Any], run_dir: str, ray_config: RayConfig, threads: int, workers: list[Any]
    ) -> str:
        with carry_errors():
            return self._setup(config, run_dir, ray_config, threads, workers)

    def _setup(
        self, config: dict[str, Any], run_dir: str, ray_config: RayConfig, threads: int, workers: list[Any]
    ) -> str:
        import torch

        from lifelong.loop.runtime import Runtime
        from lifelong.model.loading import load_model
        from lifelong.model.policy import Policy
        from lifelong.scale.ray_actor import RayActor, _quiet

        _quiet()
        torch.set_num_threads(threads)
        run_config = RunConfig.from_dict(config)
        # Ray reuses worker processes, so the global RNG is not a fresh process's: seed it so the
        # LoRA initialisation (drawn from it by peft) is the same for the same run seed.
        torch.manual_seed(run_config.seed)
        model, tokenizer, name = load_model(run_config.model)
        policy = Policy.for_config(model, tokenizer, name, run_config)  # LoRA only (require_lora)
        path = Path(run_dir)
        actor = RayActor(
            policy,
            workers,
            max_staleness=ray_config.max_staleness,
            log_path=path / "rollouts.jsonl",
            mismatch_samples=ray_config.mismatch_samples,
        )
        self.runtime = Runtime(run_config, policy, path, self.progress, actor=actor)
        actor.generator = self.runtime.generator  # the run's own random stream, restored on resume
        self.progress.note(f"run folder {path} (ray: {len(workers)} rollout workers)")
        return name

    def run(self, resume: bool, stop_after: int | None) -> RunSummary:
        with carry_errors():  # e.g. a corrupt checkpoint on resume
            summary: RunSummary = self.runtime.run(resume=resume, stop_after=stop_after)
        return summary

    def events(self) -> list[tuple[str, tuple[Any, ...]]]:
        return self.progress.drain()


def _unwrap(ray: Any, refs: Any) -> Any:
    """ray.get that re-raises a LifelongError from an actor as itself (one-line CLI errors)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, CarriedError):
            raise cause.restore() from None
        raise


def run_on_ray(
    config: RunConfig,
    run_dir: Path,
    ray_config: RayConfig = RayConfig(),
    progress: Progress | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    threads: int = 1,
) -> RunSummary:
    """Run `config` to its end (or `stop_after` updates) on Ray; same run folder and summary as
    `Runtime.run` in one process."""
    require_lora(config.unit, "Ray")
    ray = _import_ray()
    started = start_ray(ray_config)
    actors: list[Any] = []
    try:
        worker_cls = ray.remote(RolloutWorker)
        workers = [
            worker_cls.options(num_cpus=ray_config.worker_cpus, num_gpus=ray_config.worker_gpus).remote()
            for _ in range(ray_config.workers)
        ]
        actors += workers
        options: dict[str, Any] = {"num_cpus": ray_config.learner_cpus, "max_concurrency": 2}
        node = _this_node(ray)
        if node is not None:  # the run folder is written where the run was launched
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        learner = ray.remote(Learner).options(**options).remote()
        actors.append(learner)
        setups = [w.setup.remote(config.to_dict(), ray_config.worker_threads, ray_config.sampler) for w in workers]
        setups.append(learner.setup.remote(config.to_dict(), str(run_dir), ray_config, threads, workers))
        _unwrap(ray, setups)
        done = learner.run.remote(resume, stop_after)
        while True:
            finished, _ = ray.wait([done], timeout=0.5)
            _replay(_unwrap(ray, learner.events.remote()), progress)
            if finished:
                break
        summary: RunSummary = _unwrap(ray, done)
        _replay(_unwrap(ray, learner.events.remote()), progress)
        return summary
    finally:
        for handle in actors:
            ray.kill(handle)
        if started:
            ray.shutdown()


def _this_node(ray: Any) -> str | None:
    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # a Ray client (ray://) driver is no node of the cluster
        return None
    return str(node) if node else None


def _replay(events: list[tuple[str, tuple[Any, ...]]], progress: Progress | None) -> None:
    if progress is None:
        return
    for name, args in events:
        getattr(progress, name)(*args)
