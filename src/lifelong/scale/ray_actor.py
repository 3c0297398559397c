"""`RayActor`: the runtime's Actor, with episodes played by rollout-worker actors on Ray.

Who holds what. The learner (the process running `Runtime`) holds the one trainable policy, the
optimizer and the guard. Each `RolloutWorker` holds its own copy of the model + LoRA adapters and
plays jobs with the very same `play()` the single-process `LocalActor` uses.

Weights by version. Before a worker plays, the actor compares the version the worker last loaded
with the learner's `Policy.version`. Only a worker that is behind gets the adapters: one `ray.put`
of the adapter state dict per version (a few MB; the frozen base model never moves), passed by
reference so every worker behind reads the same object. A worker stamps each episode with the
version it loaded, so the learner knows exactly which weights produced it.

Bounded staleness. The runtime may call `prefetch(next_jobs, gen)` right before it learns, so the
workers sample the next step while the learner updates. Those episodes come from weights one update
old. When the next step asks for exactly those jobs, episodes whose version lags the learner by
more than `max_staleness` are refused and re-sampled with the current weights (a rollback, which
takes a new version, makes them too old as well); the rest are learned from, and the importance
ratio against the sampler's own log-probs (learn/grpo.py) corrects for the lag. `max_staleness=0`
turns prefetching off: every step is sampled on-policy, synchronously.

Randomness. Draws come from the run's own generator (the runtime's, restored on resume). A call
that goes to one worker synchronously hands that worker the generator's state and takes back the
advanced state, so one worker with `max_staleness=0` draws exactly what the single-process run
draws; several workers, or a prefetch, get one seed each from the generator instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lifelong import errors
from lifelong.errors import LifelongError
from lifelong.loop.actor import Job, play
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.scale.sync import (
    adapter_state,
    check_staleness,
    load_adapter_state,
    mirror_version,
    within_staleness,
    write_rollout,
)
from lifelong.streams.stream import Stream, Task
from lifelong.types import Episode


class CarriedError(Exception):
    """A LifelongError on its way out of a Ray actor. LifelongError's two-argument constructor does
    not survive unpickling, so Ray would hand the caller an opaque "failed to deserialize" instead
    of the one-line `problem -- fix`; `run_on_ray` turns this back into the original class."""

    def __init__(self, kind: str, problem: str, fix: str) -> None:
        super().__init__(kind, problem, fix)
        self.kind, self.problem, self.fix = kind, problem, fix

    def restore(self) -> LifelongError:
        cls = getattr(errors, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, LifelongError)):
            cls = LifelongError
        return cls(self.problem, self.fix)


@contextmanager
def carry_errors() -> Iterator[None]:
    """Wrap the body of an actor method: user-facing errors leave it as a CarriedError."""
    try:
        yield
    except LifelongError as exc:
        raise CarriedError(type(exc).__name__, exc.problem, exc.fix) from None


class RolloutWorker:
    """One rollout worker: a model copy that plays jobs with adapters it is sent by version.

    A plain class so it can be tested without Ray; `ray.remote(RolloutWorker)` makes the actor.
    Set-up is a method, not `__init__`, so its errors (a bad model folder) reach the caller as the
    original exception rather than as a dead actor.
    """

    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.tasks: dict[str, Task] = {}
        self._load: Callable[[dict[str, torch.Tensor], int], None] = lambda state, version: None

    def setup(self, config: dict[str, Any], threads: int = 1, sampler: str = "torch") -> str:
        """Load the model named by a RunConfig dict and the tasks of its stream; returns the model
        name. `sampler="vllm"` samples on this worker's GPU with vLLM instead of torch."""
        with carry_errors():
            return self._setup(config, threads, sampler)

    def _setup(self, config: dict[str, Any], threads: int, sampler: str) -> str:
        from lifelong.loop.runtime import RunConfig

        _quiet()
        torch.set_num_threads(threads)
        run_config = RunConfig.from_dict(config)
        if sampler == "vllm":
            import tempfile

            from lifelong.model.vllm_sampler import VLLMPolicy

            vllm_policy = VLLMPolicy.from_model(
                run_config.model, run_config.lora, tempfile.mkdtemp(prefix="lifelong-adapters-"), seed=run_config.seed
            )
            self.policy, self._load = vllm_policy, vllm_policy.load_adapter_state
        else:
            from lifelong.model.loading import load_model

            model, tokenizer, name = load_model(run_config.model)
            policy = Policy.for_config(model, tokenizer, name, run_config)  # LoRA only (require_lora)
            self.policy, self._load = policy, partial(load_adapter_state, policy)
        mirror_version(self.policy, -1)  # holds no learner weights yet: every first call must bring them
        self.tasks = task_map(run_config.stream)
        return self.policy.name

    def play(
        self,
        jobs: Sequence[Job],
        gen: GenerationConfig,
        version: int,
        weights: dict[str, torch.Tensor] | None,
        rng: tuple[str, Any],
    ) -> tuple[list[Episode], torch.Tensor | None]:
        """Play `jobs` with adapters of `version`; returns (episodes, advanced generator state or None)."""
        if self.policy is None:
            raise RuntimeError("RolloutWorker.setup() was not called")
        if weights is not None:
            self._load(weights, version)
        if self.policy.version != version:
            # The actor sends weights to every worker it knows to be behind; reaching this means
            # that bookkeeping broke. Sampling anyway would be the silent stale-weights failure.
            raise RuntimeError(f"worker holds adapter version {self.policy.version}, asked for {version}")
        generator = torch.Generator()
        kind, value = rng
        if kind == "state":
            generator.set_state(value)
        else:
            generator.manual_seed(int(value))
        with carry_errors():  # e.g. an environment that cannot be made on this node
            episodes = play(self.policy, jobs, lambda label: self.tasks[label].make(), gen, generator)
        return episodes, generator.get_state() if kind == "state" else None


def task_map(stream: dict[str, Any]) -> dict[str, Task]:
    """Label -> task for every task a run's stream plays (stages and general probes), as the
    runtime's own `make_env` resolves them."""
    s = Stream.from_dict(stream)
    return {t.label: t for t in [*s.tasks, *s.general]}


def _quiet() -> None:
    """Worker processes start bare: silence the same library chatter the CLI silences."""
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def shard(jobs: Sequence[Job], n: int) -> list[list[Job]]:
    """Split jobs into at most `n` contiguous, balanced shards that never split a GRPO group (a group
    shares its prompt, which the sampler prefills once)."""
    units: list[list[Job]] = []
    for job in jobs:
        if units and job.group and units[-1][-1].group == job.group:
            units[-1].append(job)
        else:
            units.append([job])
    target = -(-len(jobs) // max(n, 1))  # ceil
    shards: list[list[Job]] = []
    for unit in units:
        if not shards or (len(shards[-1]) >= target and len(shards) < n):
            shards.append([])
        shards[-1].extend(unit)
    return shards


@dataclass(frozen=True)
class _Pending:
    """Jobs sent to workers and not yet collected."""

    jobs: tuple[Job, ...]
    gen: GenerationConfig
    refs: tuple[Any, ...]  # one ObjectRef per shard, in job order
    handoff: bool  # a single worker continues the run's own generator


class RayActor:
    """Plays jobs on rollout-worker actors; see the module docstring for versions and staleness."""

    def __init__(
        self,
        policy: Policy,
        workers: Sequence[Any],
        max_staleness: int = 1,
        generator: torch.Generator | None = None,
        log_path: Path | None = None,
        mismatch_samples: int = 4,
    ) -> None:
        import ray

        if not workers:
            raise ValueError("RayActor needs at least one rollout worker")
        if max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        self._ray = ray
        self.policy = policy
        self.workers = list(workers)
        self.max_staleness = max_staleness
        # Set to the runtime's generator after the runtime is built (see run_on_ray), so draws
        # follow the run's own random stream, restored on resume.
        self.generator = generator or torch.Generator().manual_seed(0)
        self.log_path = log_path
        self.mismatch_samples = mismatch_samples
        self._loaded = [-1] * len(self.workers)  # adapter version each worker holds (or will, in order)
        self._weights: tuple[int, Any] | None = None  # (version, ObjectRef of its adapter state)
        self._ahead: _Pending | None = None
        # Running totals over the run, logged with every call.
        self.stats = {"total/broadcasts": 0, "total/prefetched": 0, "total/refused_stale": 0, "total/discarded": 0}

    # ---- the Actor protocol ------------------------------------------------------------------
    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        t0 = time.time()
        refused = 0
        ahead = self._ahead
        if ahead is not None and ahead.jobs == tuple(jobs) and ahead.gen == gen:
            self._ahead = None
            episodes = self._collect(ahead)
            # One prefetch is sampled with one version, so it is taken or refused whole.
            if all(within_staleness(e.adapter_version, self.policy.version, self.max_staleness) for e in episodes):
                self.stats["total/prefetched"] += len(episodes)
                self._record(episodes, gen, t0, prefetched=True, refused=0)
                return episodes
            refused = len(episodes)  # too old (several updates, or a rollback): sample again now
            self.stats["total/refused_stale"] += refused
        # Other jobs (probes between steps) leave a prefetch pending: the workers run it first,
        # then these, in order.
        episodes = self._collect(self._dispatch(jobs, gen, sync=True))
        check_staleness((e.adapter_version for e in episodes), self.policy.version, 0)
        self._record(episodes, gen, t0, prefetched=False, refused=refused)
        return episodes

    def prefetch(self, jobs: Sequence[Job], gen: GenerationConfig) -> None:
        """Start sampling jobs the runtime will ask for next, with the weights of now."""
        if self.max_staleness == 0:
            return  # they could only be used if no update happened: not worth the wasted work
        if self._ahead is not None:
            # The runtime moved on without asking for them (its guard re-planned that step):
            # dropped, never learned from.
            self.stats["total/discarded"] += len(self._ahead.jobs)
        self._ahead = self._dispatch(jobs, gen, sync=False)

    # ---- internals ---------------------------------------------------------------------------
    def _dispatch(self, jobs: Sequence[Job], gen: GenerationConfig, sync: bool) -> _Pending:
        shards = shard(jobs, len(self.workers))
        version = self.policy.version
        handoff = sync and len(shards) == 1
        refs = []
        for i, part in enumerate(shards):
            weights = None
            if self._loaded[i] != version:
                weights = self._weights_ref(version)
                self._loaded[i] = version  # calls to one actor run in order: later calls see them
                self.stats["total/broadcasts"] += 1
            if handoff:
                rng: tuple[str, Any] = ("state", self.generator.get_state())
            else:
                rng = ("seed", int(torch.randint(0, 2**62, (1,), generator=self.generator, device="cpu")))
            refs.append(self.workers[i].play.remote(part, gen, version, weights, rng))
        return _Pending(tuple(jobs), gen, tuple(refs), handoff)

    def _weights_ref(self, version: int) -> Any:
        if self._weights is None or self._weights[0] != version:
            # One put per version; dropping the old reference lets Ray free the old weights.
            self._weights = (version, self._ray.put(adapter_state(self.policy)))
        return self._weights[1]

    def _collect(self, pending: _Pending) -> list[Episode]:
        results = self._ray.get(list(pending.refs))
        episodes: list[Episode] = []
        for shard_episodes, state in results:
            episodes.extend(shard_episodes)
            if pending.handoff and state is not None:
                self.generator.set_state(state)
        if len(episodes) != len(pending.jobs):
            raise RuntimeError(f"workers returned {len(episodes)} episodes for {len(pending.jobs)} jobs")
        return episodes

    def _record(
        self, episodes: list[Episode], gen: GenerationConfig, t0: float, prefetched: bool, refused: int
    ) -> None:
        write_rollout(
            self.log_path,
            self.policy,
            episodes,
            gen,
            self.mismatch_samples,
            workers=len(self.workers),
            prefetched=prefetched,
            refused_stale=refused,
            wait_s=round(time.time() - t0, 4),
            **self.stats,
        )
