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

    python benchmarks/faults.py [--faults a,b] [--json]
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lifelong.cli import _quiet_libraries
from lifelong.envs.base import Env, StepResult
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.gate import GuardConfig
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.runtime import RunConfig, Runtime, _Slot
from lifelong.memory.store import ExperienceStore
from lifelong.model.loading import load_model
from lifelong.model.policy import Policy
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.types import Batch, UpdateReport

CONTROL = "none"  # the no-fault run
FAULTS = ("nan_grad", "lr_spike", "flipped_reward", "always_one", "garbage_feedback", "kill9")
FAULT_STEPS = range(1, 4)
RECOVERY_TOLERANCE = 0.02  # probe points (as a fraction) a recovered run may end below its baseline
TOTAL_STEPS = 8
TRAINED = Task.of("add", max_value=20)
GENERAL = Task.of("letter", position="first")


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


def config(guard: bool, steps: int, probe_size: int) -> RunConfig:
    stream = Stream("faults", (Stage(TRAINED, steps * 32),), probe_size=probe_size, general=(GENERAL,))
    return RunConfig(stream=stream.to_dict(), eval_every=4, guard=GuardConfig(enabled=guard), grpo=GRPOConfig())


class FaultyReward(Env):
    """Wraps an environment and rewrites its rewards while a fault is active."""

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


class FaultyRuntime(Runtime):
    """The runtime with one fault switched on during FAULT_STEPS (never during evaluations)."""

    def __init__(self, *args: Any, fault: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fault = fault
        self.active = False
        self.rng = random.Random(0)
        update = self.learner.update
        accumulate = self.learner._accumulate

        def spiked_update(batch: Batch, *anchors: Any) -> UpdateReport:
            if self.active and fault == "lr_spike":
                self.learner.lr_scale *= 100
            return update(batch, *anchors)

        def poisoned(chunk: Any, total: int) -> dict[str, float]:
            out = accumulate(chunk, total)
            if self.active and fault == "nan_grad":
                for p in self.learner.optimizer.param_groups[0]["params"][:4]:
                    if p.grad is not None:
                        p.grad.fill_(float("nan"))
            return out

        self.learner.update = spiked_update  # type: ignore[method-assign]
        self.learner._accumulate = poisoned  # type: ignore[method-assign]

    def make_env(self, label: str) -> Env:
        env = super().make_env(label)
        if self.active and self.fault in ("flipped_reward", "always_one", "garbage_feedback"):
            return FaultyReward(env, self.fault, self.rng)
        return env

    def _step(self, slot: _Slot):  # type: ignore[no-untyped-def]
        self.active = slot.step in FAULT_STEPS
        try:
            return super()._step(slot)
        finally:
            self.active = False


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


def reset_to(policy: Policy, warm: Path) -> None:
    ring = CheckpointRing(warm.parent)
    ring.restore(ring.load(warm), policy.model, None)
    policy.version = 0


def result(fault: str, guard: bool, run_dir: Path, lost: int, detected: bool | None = None) -> FaultResult:
    before, after = scores(run_dir)
    delta = min(after[t] - before[t] for t in before)
    found = findings(run_dir)
    rollbacks = sum(1 for f in found if f == "rollback")
    hit = detected if detected is not None else any(f != "rollback" for f in found)
    recovered = delta >= -RECOVERY_TOLERANCE
    return FaultResult(fault, guard, hit, recovered, round(delta, 4), lost, before, after, rollbacks, found)


def run_fault(policy: Policy, fault: str, guard: bool, warm: Path, work: Path, probe_size: int) -> FaultResult:
    run_dir = work / f"{fault}-{'on' if guard else 'off'}"
    reset_to(policy, warm)
    runtime = FaultyRuntime(config(guard, TOTAL_STEPS, probe_size), policy, run_dir, fault=fault)
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
    reset_to(policy, warm)
    runtime = Runtime(config(guard, TOTAL_STEPS, probe_size), policy, run_dir)
    runtime.run(resume=True)
    with ExperienceStore(run_dir / "experience.sqlite") as store:
        lost = len(before_ids - store.ids())
    resumed = any(json.loads(line)["type"] == "resume" for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return result(fault, guard, run_dir, lost, detected=resumed)


def child(args: argparse.Namespace) -> None:
    """The victim of the kill9 fault: a normal run that marks the moment it is mid-update."""
    model, tok, name = load_model()
    policy = Policy(model, tok, name=name)
    reset_to(policy, Path(args.warm))
    runtime = Runtime(config(args.guard, TOTAL_STEPS, args.probe_size), policy, Path(args.child))
    accumulate = runtime.learner._accumulate

    def marked(chunk: Any, total: int) -> dict[str, float]:
        if runtime.learner.step == 1:  # inside the update of step 2
            Path(args.marker).touch()
            time.sleep(0.5)  # still inside the update when the parent's SIGKILL lands
        return accumulate(chunk, total)

    runtime.learner._accumulate = marked  # type: ignore[method-assign]
    runtime.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lifelong-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    model, tok, name = load_model()
    policy = Policy(model, tok, name=name)
    t0 = time.time()
    print(f"warm-up: {args.warm_steps} steps of {TRAINED.label} (work folder {work})", file=sys.stderr)
    warm = warm_up(policy, work, args.warm_steps, args.probe_size)
    results = []
    control: dict[bool, float] = {}
    for fault in [CONTROL, *faults]:
        for guard in (True, False):
            print(f"[{time.time() - t0:5.0f}s] {fault} guard={'on' if guard else 'off'}", file=sys.stderr)
            if fault == "kill9":
                r = run_kill9(fault, guard, warm, work, args.probe_size, policy)
            else:
                r = run_fault(policy, fault, guard, warm, work, args.probe_size)
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
    if args.json:
        keys = ("fault", "guard", "detected", "recovered", "probe_delta", "episodes_lost")
        keys += ("control_delta", "recovered_vs_control")
        print(json.dumps([{k: asdict(r)[k] for k in keys} for r in results if r.fault != CONTROL]))


if __name__ == "__main__":
    main()
