"""`lifelong` command line: a thin layer over the library.

  lifelong run     act and learn on a stream of tasks; writes runs/<id>/ (metrics, curve, report)
  lifelong report  rebuild the report and curve of a run folder
  lifelong envs    list the environments

Errors about input print one line (`error: <problem> -- <fix>`) and exit with code 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from lifelong.errors import ConfigError, LifelongError

EXIT_BAD_INPUT = 2


def _quiet_libraries() -> None:
    """Silence third-party chatter (weight-loading bars, deprecation notes) the user cannot act on."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class ConsoleProgress:
    """A live bar (episodes, reward, ETA) on a terminal; plain lines with ETA in logs and CI."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._done = 0
        self._total = 0
        self._t0 = time.time()
        self._first = 0

    def start(self, total_episodes: int, done: int) -> None:
        self._total, self._done, self._first, self._t0 = total_episodes, done, done, time.time()
        if not self.enabled or not self.console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes  reward {task.fields[reward]:.2f}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._bar.start()
        self._task = self._bar.add_task("run", total=total_episodes, completed=done, stage="", reward=0.0)

    def advance(self, episodes: int, reward: float, stage: str) -> None:
        self._done += episodes
        if self._bar is not None:
            self._bar.update(self._task, advance=episodes, reward=reward, stage=stage)
        elif self.enabled:
            rate = (self._done - self._first) / max(time.time() - self._t0, 1e-6)
            eta = (self._total - self._done) / rate if rate > 0 else 0.0
            pct = 100 * self._done / max(self._total, 1)
            self.console.print(
                f"[{pct:5.1f}%] {self._done}/{self._total} episodes  {stage}  reward {reward:.2f}  "
                f"eta {int(eta // 60)}m{int(eta % 60):02d}s",
                highlight=False,
            )

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]{text}[/dim]")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _stream_from_args(args: argparse.Namespace) -> Any:
    from lifelong.streams.defaults import get_stream
    from lifelong.streams.stream import Stage, Stream, Task

    if args.tasks:
        from lifelong.envs.registry import get_spec

        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        for name in names:
            get_spec(name)  # unknown names fail here, with close matches
        stages = tuple(Stage(Task.of(n), args.episodes or 256) for n in names)
        return Stream("+".join(names), stages, probe_size=args.probe_size or 48)
    stream = get_stream(args.stream)
    if args.episodes or args.probe_size:
        stages = tuple(Stage(s.task, args.episodes or s.episodes) for s in stream.stages)
        return Stream(stream.name, stages, args.probe_size or stream.probe_size, stream.description)
    return stream


def _run_dir(args: argparse.Namespace) -> Path:
    runs = Path(args.runs_dir)
    if args.run_id:
        return runs / args.run_id
    if args.resume:
        candidates = sorted(
            (p for p in runs.glob("*") if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime
        )
        if not candidates:
            raise ConfigError(f"--resume: no run to resume in {runs}/", "start a run first, or pass --run-id")
        return candidates[-1]
    return runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from lifelong.evaluate.report import write_report
    from lifelong.learn.grpo import GRPOConfig
    from lifelong.loop.runtime import RunConfig, Runtime
    from lifelong.model.loading import load_model, resolve_model_folder
    from lifelong.model.policy import Policy

    torch.set_num_threads(args.threads)
    run_dir = _run_dir(args)
    if args.resume:
        if not (run_dir / "config.json").is_file():
            raise ConfigError(
                f"--resume: {run_dir} is not a run folder (no config.json)", "check --run-id / --runs-dir"
            )
        config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run folder {run_dir} already exists", "pass --resume to continue it, or a new --run-id")
        stream = _stream_from_args(args)
        config = RunConfig(
            stream=stream.to_dict(),
            model=args.model,
            reasoning_effort=args.reasoning_effort,
            thinking_tokens=args.thinking_tokens,
            seed=args.seed,
            grpo=GRPOConfig(**({"learning_rate": args.lr} if args.lr else {})),
        )
    progress = ConsoleProgress(enabled=not args.quiet)
    resolve_model_folder(config.model, announce=progress.note)  # bad paths fail before any output
    model, tokenizer, name = load_model(config.model)
    progress.note(f"run folder {run_dir}")
    policy = Policy(model, tokenizer, name=name, lora=config.lora)
    runtime = Runtime(config, policy, run_dir, progress)
    try:
        summary = runtime.run(resume=args.resume, stop_after=args.max_steps)
    finally:
        progress.stop()
    report = write_report(run_dir, summary.to_json(), config.to_dict())
    result = summary.to_json()
    if not args.quiet:
        for task in result["tasks"]:
            b, a = result["before"].get(task, 0.0), result["after"].get(task, 0.0)
            progress.console.print(f"{task:32s} held-out success {100 * b:5.1f}% -> {100 * a:5.1f}%", highlight=False)
        progress.console.print(f"report: {report}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lifelong.evaluate.report import read_metrics, write_report

    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.json)", "pass a folder under runs/")
    config = json.loads(config_path.read_text())
    evals = [r for r in read_metrics(run_dir) if r.get("type") == "eval"]
    updates = [r for r in read_metrics(run_dir) if r.get("type") == "update"]
    tasks = list(dict.fromkeys(t for e in evals for t in e["scores"]))
    summary = {
        "model": config.get("model") or "smollm2-135m-instruct",
        "tasks": tasks,
        "episodes": updates[-1]["episodes"] if updates else 0,
        "before": evals[0]["scores"] if evals else {},
        "after": evals[-1]["scores"] if evals else {},
        "minutes": 0.0,
    }
    print(write_report(run_dir, summary, config))
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from lifelong.envs.registry import env_specs

    specs = env_specs()
    if args.json:
        print(
            json.dumps(
                [{"name": s.name, "source": s.source, "multi_turn": s.multi_turn, "knobs": s.knobs} for s in specs],
                default=str,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(specs)} environments")
    for col in ("name", "source", "turns", "difficulty knobs", "description"):
        table.add_column(col)
    for s in specs:
        knobs = ", ".join(f"{k}={v}" for k, v in s.knobs.items())
        table.add_row(s.name, s.source, "multi" if s.multi_turn else "single", knobs, s.description)
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifelong", description="An LM agent that keeps learning while it works.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="act and learn on a stream of tasks")
    run.add_argument("--stream", default="demo", help="a named stream (default: demo)")
    run.add_argument("--tasks", help="comma-separated environment names, one stage each (instead of --stream)")
    run.add_argument("--episodes", type=int, help="training episodes per stage (overrides the stream)")
    run.add_argument("--probe-size", type=int, help="held-out items per task")
    run.add_argument("--model", help="a local Hugging Face model folder (default: the embedded SmolLM2-135M)")
    run.add_argument(
        "--reasoning-effort",
        default="none",
        choices=["none", "low", "medium", "high"],
        help="thinking budget: 0/32/128/512 tokens",
    )
    run.add_argument("--thinking-tokens", type=int, help="exact thinking budget (overrides --reasoning-effort)")
    run.add_argument("--lr", type=float, help="learning rate of the adapters")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    run.add_argument("--runs-dir", default="runs")
    run.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    run.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    run.add_argument("--max-steps", type=int, help="stop after this many updates (the run can be resumed)")
    run.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="rebuild report.md and the learning curve of a run")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    envs = sub.add_parser("envs", help="list environments")
    envs.add_argument("--json", action="store_true")
    envs.set_defaults(func=cmd_envs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args))
    except LifelongError as exc:
        if args.debug:
            raise
        print(f"error: {exc.problem} -- {exc.fix}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; resume with `lifelong run --resume`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
