"""What the guard costs a normal run: the same short run with the guard on and off, one process.

Both runs start from the same pretrained weights and adapter initialisation, play the same items
with the same seeds, evaluate at the same points, and differ only in `GuardConfig.enabled`. The
guard's work is the reward screen, the adapter snapshot and update size per step, and at every
evaluation the KL-drift reading, a fresh drift reference and a copy of the adapters that passed. The
gate reads the evaluation the run makes anyway; it plays episodes of its own only when a probe drop
is over budget (`GuardConfig.confirm_items` fresh items, now and by the reference), so this figure
includes them only if such a drop happens. Wall time per run includes everything.

    python benchmarks/guard_overhead.py [--steps 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lifelong.cli import _quiet_libraries
from lifelong.guard.gate import GuardConfig
from lifelong.loop.runtime import RunConfig, Runtime
from lifelong.model.loading import load_model
from lifelong.model.policy import Policy
from lifelong.streams.stream import Stage, Stream, Task


def timed_run(guard: bool, steps: int, probe_size: int, work: Path, repeat: int) -> float:
    model, tok, name = load_model()
    stream = Stream("overhead", (Stage(Task.of("add", max_value=20), steps * 32),), probe_size=probe_size)
    # Rehearsal and consolidation are kept off in both runs: they are methods, not the guard.
    config = RunConfig(
        stream=stream.to_dict(), eval_every=5, rehearsal=0.0, consolidate=False, guard=GuardConfig(enabled=guard)
    )
    torch.manual_seed(0)
    runtime = Runtime(config, Policy(model, tok, name=name), work / f"{'on' if guard else 'off'}-{repeat}")
    t0 = time.perf_counter()
    runtime.run()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--probe-size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1, help="alternate off/on runs this many times")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lifelong-guard-overhead-"))
    off, on = [], []
    for r in range(args.repeats):  # alternate so drifting machine load hits both alike
        off.append(timed_run(False, args.steps, args.probe_size, work, r))
        on.append(timed_run(True, args.steps, args.probe_size, work, r))
    t_off, t_on = min(off), min(on)
    slowdown = t_on / t_off - 1
    print(f"{args.steps} steps x 32 episodes, evaluations every 5 steps, {args.probe_size} probes")
    print(f"guard off: {t_off:7.1f} s   (runs: {', '.join(f'{t:.1f}' for t in off)})")
    print(f"guard on:  {t_on:7.1f} s   (runs: {', '.join(f'{t:.1f}' for t in on)})")
    print(f"slowdown with the guard: {100 * slowdown:+.1f}% (target: under 15%)")
    if args.json:
        print(json.dumps({"off_s": round(t_off, 2), "on_s": round(t_on, 2), "slowdown": round(slowdown, 4)}))


if __name__ == "__main__":
    main()
