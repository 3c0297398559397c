"""Fault injection on the real default model: does the guard notice, undo and recover?

The model first learns addition for a few steps (the "warm" adapters: a skill it now has). Then,
for each fault and with the guard on and off, a short run continues from the warm adapters:
the fault is active in steps 1..3, steps 4..8 are normal, and probes are evaluated at steps
0 (before the fault), 4 and 8 (the gate runs at those evaluations).

Faults:
  nan_grad          gradients poisoned with NaN
  lr_spike          learning rate x100
  flipped_reward    reward r -> 1 - r (the advantage flips sign; 1 - r keeps the declared range so a
                    range check cannot catch it trivially)
  always_one        every answer rewarded 1.0 (a hacked reward)
  garbage_feedback  random 0/1 rewards
  kill9             the process is killed with SIGKILL in the middle of an update, then resumed

A control run with no fault (guard on and off) comes first: it shows what the same eight steps
of normal learning do to the probes, and whether the guard raises false alarms.

Per fault: detected (a guard finding, or for kill9 the resume noticing the interrupted step),
recovered (every probe within 2 points of its value before the fault, or better), probe_delta
(worst probe change, after - before), episodes_lost (stored episodes missing afterwards), and
control_delta (the no-fault run's probe_delta with the same guard setting) and
recovered_vs_control (within 2 points of before or of the no-fault run's end, whichever is lower:
normal learning moves a probe by an item or two too, and that is not the fault's damage).

Targets (--target): `run` (the default) is the runtime's loop, `Runtime.run`. Its faults go in
through the parts a user can swap: rewards through an environment wrapper the actor plays with,
the learning rate and the gradients through a wrapper around the learner the learning core calls,
kill9 through the process. `serve` (the serving process) is not written yet. A target is a function
of the arguments that returns the single run of one (fault, guard setting) pair (`TARGETS`); the
control run, the comparison and the table are shared.

    python benchmarks/faults.py [--target run] [--faults a,b] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lifelong.cli import _quiet_libraries
from lifelong.envs.base import Env, StepResult
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.gate import GuardConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.learn.learner import Learner
from lifelong.loop.actor import Job, LocalActor
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.memory.store import ExperienceStore
from lifelong.model.loading import load_model
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.types import Batch, Episode, Sample, UpdateReport

CONTROL = "none"  # the no-fault run
FAULTS = ("nan_grad", "lr_spike", "flipped_reward", "always_one", "garbage_feedback", "kill9")
REWARD_FAULTS = ("flipped_reward", "always_one", "garbage_feedback")
FAULT_STEPS = range(1, 4)
RECOVERY_TOLERANCE = 0.02  # probe points (as a fraction) a recovered run may end below its baseline
TOTAL_STEPS = 8
TRAINED = Task.of("add", max_value=20)
GENERAL = Task.of("letter", position="first")
POISONED_TENSORS = 4  # adapter tensors whose gradients nan_grad replaces


@dataclass
class FaultResult:
    fault: str
    guard: bool
    detected: bool
    recovered: bool
    probe_delta: float
    episodes_lost: int
    before: dict[str, float]
    after: dict[str, float]
    rollbacks: int
    findings: list[str]
    control_delta: float | None = None
    recovered_vs_control: bool | None = None


# (fault or CONTROL, guard on) -> the result of one short run with it
RunOne = Callable[[str, bool], FaultResult]


# ---- the faults, through interfaces a user can swap ---------------------------------------------
class FaultyReward(Env):
    """Wraps an environment and rewrites its rewards (the actor only makes it during a reward fault)."""

    def __init__(self, env: Env, fault: str, rng: random.Random) -> None:
        self.env, self.fault, self.rng = env, fault, rng
        self.max_turns, self.success_threshold = env.max_turns, env.success_threshold

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return self.env.reset(seed=seed)

    def step(self, action: str) -> StepResult:
        result = self.env.step(action)
        reward = {
            "flipped_reward": 1.0 - result.reward,
            "always_one": 1.0,
            "garbage_feedback": float(self.rng.random() < 0.5),
        }[self.fault]
        return result._replace(reward=reward)


@contextmanager
def gradient_hook(
    params: Sequence[torch.Tensor], hook: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """`hook` sees (and may replace) every gradient computed for `params` inside the block."""
    handles = [p.register_hook(hook) for p in params]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FaultyLearner:
    """The learner the learning core calls, passing through to `inner`; while `active()` its update
    has the fault: lr_spike learns at 100x the guard's learning-rate scale, nan_grad gets NaN
    gradients on a few adapter tensors (replaced as they are computed, so the learner's own
    non-finite check sees them as it would a real NaN), kill9 touches `marker` once gradients flow
    and waits there for the SIGKILL. Reward faults pass through: the environment has them."""

    def __init__(self, inner: Learner, fault: str, active: Callable[[], bool], marker: Path | None = None) -> None:
        self.inner = inner
        self.fault = fault
        self.active = active
        self.marker = marker

    @property
    def step(self) -> int:
        return self.inner.step

    @step.setter
    def step(self, value: int) -> None:  # a resume restores the learner's step
        self.inner.step = value

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.inner.optimizer

    def batch(self, episodes: Sequence[Episode], anchors: Sequence[Sample] = ()) -> Batch:
        return self.inner.batch(episodes, anchors)

    def update(self, batch: Batch, lr_scale: float = 1.0) -> UpdateReport:
        if not self.active() or self.optimizer is None:
            return self.inner.update(batch, lr_scale)
        if self.fault == "lr_spike":
            return self.inner.update(batch, 100 * lr_scale)
        # (hook, how many adapter tensors it watches) per fault that acts on the gradients
        hooks = {"nan_grad": (self._poison, POISONED_TENSORS), "kill9": (self._wait_for_kill, 1)}
        if self.fault not in hooks:
            return self.inner.update(batch, lr_scale)
        hook, tensors = hooks[self.fault]
        with gradient_hook(self.optimizer.param_groups[0]["params"][:tensors], hook):
            return self.inner.update(batch, lr_scale)

    @staticmethod
    def _poison(grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))

    def _wait_for_kill(self, grad: torch.Tensor) -> None:
        if self.marker is not None:
            self.marker.touch()
        time.sleep(0.5)  # still inside the update when the parent's SIGKILL lands


class FaultyActor(LocalActor):
    """The runtime's local actor, and the fault's clock: it counts the steps by their training
    calls (`Runtime.run` plays each step's episodes in one call), and while a reward fault is
    active it plays step and retry episodes (never probes) in environments that rewrite rewards."""

    def __init__(self, runtime: Runtime, fault: str) -> None:
        super().__init__(runtime.policy, self._make_env, runtime.generator)
        self.task_env = runtime.make_env
        self.fault = fault
        self.step = 0  # the step being played and learned from; 0 before the first
        self.rewriting = False
        self.rng = random.Random(0)

    def active(self) -> bool:
        return self.step in FAULT_STEPS

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        if any(job.split == "train" for job in jobs):
            self.step += 1
        probes = any(job.split == "probe" for job in jobs)
        self.rewriting = self.active() and self.fault in REWARD_FAULTS and not probes
        try:
            return super().play(jobs, gen)
        finally:
            self.rewriting = False

    def _make_env(self, label: str) -> Env:
        env = self.task_env(label)
        return FaultyReward(env, self.fault, self.rng) if self.rewriting else env


# ---- target "run": the runtime's loop -----------------------------------------------------------
def config(guard: bool, steps: int, probe_size: int) -> RunConfig:
    stream = Stream("faults", (Stage(TRAINED, steps * 32),), probe_size=probe_size, general=(GENERAL,))
    return RunConfig(stream=stream.to_dict(), eval_every=4, guard=GuardConfig(enabled=guard), grpo=GRPOConfig())


def findings(run_dir: Path) -> list[str]:
    path = run_dir / "guard_events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["detector"] for line in path.read_text().splitlines()]


def scores(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    evals: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "eval":
            evals[r["step"]] = r["scores"]
    return evals[min(evals)], evals[max(evals)]


def warm_up(policy: Policy, work: Path, steps: int, probe_size: int) -> Path:
    """Learn the trained task for a few steps; returns the checkpoint every fault run starts from."""
    run = Runtime(config(True, steps, probe_size), policy, work / "warm")
    run.run()
    return run.ring.paths()[-1]


def reset_to(runtime: Runtime, warm: Path) -> None:
    """Put the warm adapters back into the runtime's policy: a change made outside its learning
    core, so they take a new version (versions never repeat)."""
    ring = CheckpointRing(warm.parent)
    ring.restore(ring.load(warm), runtime.policy.model, None)
    runtime.core.note_external_update()


def result(fault: str, guard: bool, run_dir: Path, lost: int, detected: bool | None = None) -> FaultResult:
    before, after = scores(run_dir)
    delta = min(after[t] - before[t] for t in before)
    found = findings(run_dir)
    rollbacks = sum(1 for f in found if f == "rollback")
    hit = detected if detected is not None else any(f != "rollback" for f in found)
    recovered = delta >= -RECOVERY_TOLERANCE
    return FaultResult(fault, guard, hit, recovered, round(delta, 4), lost, before, after, rollbacks, found)


def run_fault(policy: Policy, fault: str, guard: bool, warm: Path, work: Path, probe_size: int) -> FaultResult:
    """One run from the warm adapters with `fault` (or CONTROL) active in FAULT_STEPS."""
    run_dir = work / f"{fault}-{'on' if guard else 'off'}"
    runtime = Runtime(config(guard, TOTAL_STEPS, probe_size), policy, run_dir)
    reset_to(runtime, warm)
    actor = FaultyActor(runtime, fault)
    runtime.actor = actor
    runtime.core.learner = FaultyLearner(runtime.learner, fault, actor.active)
    runtime.run()
    with ExperienceStore(run_dir / "experience.sqlite") as store:
        lost = TOTAL_STEPS * runtime.config.episodes_per_step - store.count(split="train")
    return result(fault, guard, run_dir, lost)


def run_kill9(fault: str, guard: bool, warm: Path, work: Path, probe_size: int, policy: Policy) -> FaultResult:
    """A child process runs the fault-free loop; it is SIGKILLed inside the update of step 2."""
    run_dir = work / f"{fault}-{'on' if guard else 'off'}"
    marker = run_dir.parent / f"{run_dir.name}.in-update"
    cmd = [sys.executable, __file__, "--child", str(run_dir), "--warm", str(warm), "--probe-size", str(probe_size)]
    cmd += ["--threads", str(torch.get_num_threads())]
    child = subprocess.Popen([*cmd, "--guard" if guard else "--no-guard", "--marker", str(marker)])
    while not marker.exists():
        if child.poll() is not None:
            raise RuntimeError("the child run ended before the kill")
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with ExperienceStore(run_dir / "experience.sqlite") as store:
        before_ids = store.ids()
    runtime = Runtime(config(guard, TOTAL_STEPS, probe_size), policy, run_dir)
    reset_to(runtime, warm)  # the resume then loads the newest checkpoint over it
    runtime.run(resume=True)
    with ExperienceStore(run_dir / "experience.sqlite") as store:
        lost = len(before_ids - store.ids())
    resumed = any(json.loads(line)["type"] == "resume" for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return result(fault, guard, run_dir, lost, detected=resumed)


def child(args: argparse.Namespace) -> None:
    """The victim of the kill9 fault: a normal run that marks the moment it is mid-update."""
    model, tok, name = load_model()
    policy = Policy(model, tok, name=name)
    runtime = Runtime(config(args.guard, TOTAL_STEPS, args.probe_size), policy, Path(args.child))
    reset_to(runtime, Path(args.warm))
    learner = runtime.learner
    # learner.step counts applied updates: 1 inside the update of step 2
    runtime.core.learner = FaultyLearner(learner, "kill9", lambda: learner.step == 1, Path(args.marker))
    runtime.run()


def run_target(args: argparse.Namespace) -> RunOne:
    """The runtime's loop: warm up on the trained task, then one short run per (fault, guard)."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lifelong-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    model, tok, name = load_model()
    policy = Policy(model, tok, name=name)
    print(f"warm-up: {args.warm_steps} steps of {TRAINED.label} (work folder {work})", file=sys.stderr)
    warm = warm_up(policy, work, args.warm_steps, args.probe_size)

    def run_one(fault: str, guard: bool) -> FaultResult:
        if fault == "kill9":
            return run_kill9(fault, guard, warm, work, args.probe_size, policy)
        return run_fault(policy, fault, guard, warm, work, args.probe_size)

    return run_one


# ---- target "serve": the serving process --------------------------------------------------------
def serve_target(args: argparse.Namespace) -> RunOne:
    print("faults: --target serve is not yet written; use --target run", file=sys.stderr)
    sys.exit(2)


TARGETS: dict[str, Callable[[argparse.Namespace], RunOne]] = {"run": run_target, "serve": serve_target}


# ---- shared: the control run, the comparison, the table -----------------------------------------
def compare(run_one: RunOne, faults: Sequence[str], t0: float) -> list[FaultResult]:
    """The control run, then every fault, each with the guard on and off."""
    results = []
    control: dict[bool, float] = {}
    for fault in [CONTROL, *faults]:
        for guard in (True, False):
            print(f"[{time.time() - t0:5.0f}s] {fault} guard={'on' if guard else 'off'}", file=sys.stderr)
            r = run_one(fault, guard)
            if fault == CONTROL:
                control[guard] = r.probe_delta
            else:
                r.control_delta = control[guard]
                r.recovered_vs_control = r.probe_delta >= min(0.0, r.control_delta) - RECOVERY_TOLERANCE
            results.append(r)
            print(
                f"    detected={r.detected} recovered={r.recovered} probe_delta={r.probe_delta:+.3f} "
                f"lost={r.episodes_lost} rollbacks={r.rollbacks} findings={sorted(set(r.findings))}",
                file=sys.stderr,
            )
    return results


def report(results: Sequence[FaultResult], t0: float, as_json: bool) -> None:
    print(f"\n{'fault':18s} {'guard':5s} {'detected':8s} {'recovered':9s} {'probe_delta':>11s}", end=" ")
    print(f"{'control':>8s} {'vs_control':10s} {'lost':>4s}")
    for r in results:
        ctrl = f"{100 * r.control_delta:+7.1f}p" if r.control_delta is not None else f"{'':8s}"
        vs_control = "" if r.recovered_vs_control is None else str(r.recovered_vs_control)
        print(
            f"{r.fault:18s} {'on' if r.guard else 'off':5s} {r.detected!s:8s} {r.recovered!s:9s} "
            f"{100 * r.probe_delta:+10.1f}p {ctrl} {vs_control:10s} {r.episodes_lost:4d}"
        )
    print(f"({(time.time() - t0) / 60:.1f} minutes)")
    if as_json:
        keys: tuple[str, ...] = ("fault", "guard", "detected", "recovered", "probe_delta", "episodes_lost")
        keys += ("control_delta", "recovered_vs_control")
        print(json.dumps([{k: asdict(r)[k] for k in keys} for r in results if r.fault != CONTROL]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(TARGETS), default="run", help="what the faults hit (default: run)")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--warm-steps", type=int, default=6)
    parser.add_argument("--probe-size", type=int, default=48)
    parser.add_argument("--workdir", help="keep run folders here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    parser.add_argument("--marker", help=argparse.SUPPRESS)
    parser.add_argument("--guard", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    t0 = time.time()
    run_one = TARGETS[args.target](args)
    report(compare(run_one, faults, t0), t0, args.json)


if __name__ == "__main__":
    main()
