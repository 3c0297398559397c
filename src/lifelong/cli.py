"""`lifelong` command line: a thin layer over the library.

  lifelong run     act and learn on a stream of tasks; writes runs/<id>/ (metrics, curve, report)
  lifelong report  rebuild the report and curve of a run folder
  lifelong envs    list the environments
  lifelong play    play an environment yourself (the quickest way to see one is right)
  lifelong serve   an OpenAI-compatible server that learns from its users' feedback
  lifelong teach   store documents into a serving store's memory, without a server
  lifelong consolidate  distil a run's memory (RUN_DIR) or a serving tenant's (--store, --tenant) into weights

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
    stream = get_stream(args.stream)  # a named stream or a YAML file, checked before anything runs
    if args.episodes or args.probe_size:
        stages = tuple(Stage(s.task, args.episodes or s.episodes) for s in stream.stages)
        return Stream(stream.name, stages, args.probe_size or stream.probe_size, stream.description, stream.general)
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
    from lifelong.learn.sft import SFTConfig
    from lifelong.loop.runtime import RunConfig, Runtime
    from lifelong.loop.world import WorldConfig
    from lifelong.model.loading import load_model, resolve_model_folder
    from lifelong.model.policy import Policy, require_lora

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
        if args.turn_credit:
            stream = stream.with_turn_credit()
        config = RunConfig.for_method(
            args.method,
            stream=stream.to_dict(),
            model=args.model,
            reasoning_effort=args.reasoning_effort,
            thinking_tokens=args.thinking_tokens,
            seed=args.seed,
            store=args.store,
            unit=args.unit,
            sampler_precision=args.sampler_precision,
            learner_precision=args.learner_precision,
            grpo=GRPOConfig(turn_advantages=args.turn_credit, **({"learning_rate": args.lr} if args.lr else {})),
            sft=SFTConfig(**({"learning_rate": args.lr} if args.lr else {})),
            world=WorldConfig(
                learn=args.world_model, auxiliary=args.world_auxiliary, imagined_per_item=args.world_imagined
            ),
        )
    if args.ray or args.ray_address or args.sampler == "vllm":  # before the model loads and heals
        require_lora(config.unit, "vLLM" if args.sampler == "vllm" else "Ray")
    progress = ConsoleProgress(enabled=not args.quiet)
    resolve_model_folder(config.model, announce=progress.note)  # bad paths fail before any output
    if args.ray or args.ray_address:  # the same Runtime inside a Ray learner actor (lifelong.scale)
        summary = _run_on_ray(args, config, run_dir, progress)
    else:
        model, tokenizer, name = load_model(config.model)
        progress.note(f"run folder {run_dir}")
        # LoRA's A matrices are drawn from the global generator: unseeded, two runs of one seed
        # differed by ~1% in their first gradient and ~10 points in the demo (dev/LOG.md, stop 24).
        torch.manual_seed(config.seed)
        policy = Policy.for_config(model, tokenizer, name, config)
        if args.sampler == "vllm":  # sample on this machine's GPU with vLLM; learn here as always
            from lifelong.scale.vllm_actor import vllm_runtime

            runtime = vllm_runtime(config, policy, run_dir, progress)
        else:
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


def _run_on_ray(args: argparse.Namespace, config: Any, run_dir: Path, progress: ConsoleProgress) -> Any:
    from lifelong.scale.ray_run import RayConfig, run_on_ray

    ray_config = RayConfig(
        address=args.ray_address,
        workers=args.ray_workers,
        max_staleness=args.max_staleness,
        sampler=args.sampler,
        worker_gpus=1.0 if args.sampler == "vllm" else 0.0,
        log_to_driver=args.debug,
    )
    try:
        return run_on_ray(
            config, run_dir, ray_config, progress, resume=args.resume, stop_after=args.max_steps, threads=args.threads
        )
    finally:
        progress.stop()


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
    console = Console()
    console.print(table)
    console.print(
        "Also: rg:<dataset> for any reasoning-gym dataset and ta:<game id> for any single-player textarena "
        "game that runs offline (their own prompts). Try one: lifelong play NAME",
        highlight=False,
    )
    return 0


def _knobs_from_args(items: list[str]) -> dict[str, Any]:
    """`--knob max_value=10` pairs; values read as YAML does (10 -> int, true -> bool, up -> str)."""
    import yaml

    knobs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--knob {item!r} is not NAME=VALUE", "e.g. --knob max_value=10")
        try:
            knobs[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            knobs[key.strip()] = value
    return knobs


def cmd_play(args: argparse.Namespace) -> int:
    """A person plays an environment in the terminal: observations on stdout, actions from stdin.
    With `--agent RUN_DIR` the run's agent plays instead, planning with its world model when one
    is there (`--show-plan` prints each imagined move before the real one)."""
    import random

    from lifelong.envs.registry import make

    if args.agent is not None:
        return _agent_plays(args)
    if args.show_plan or args.world is not None:
        raise ConfigError("--show-plan and --world need an agent", "add --agent RUN_DIR (a run folder)")
    env = make(args.env, **_knobs_from_args(args.knob or []))
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    observation, info = env.reset(seed=seed)
    echo = not sys.stdin.isatty()  # piped input: show it, so the transcript reads like a game
    print(f"{args.env} (seed {seed}): type your answer and press Enter; Ctrl-D quits.\n")
    total, turn, finished = 0.0, 0, False
    while not finished and turn < env.max_turns:
        turn += 1
        print(observation)
        try:
            action = input(f"[{turn}/{env.max_turns}] > " if env.max_turns > 1 else "> ")
        except EOFError:
            print("\n(no more input)")
            break
        if echo:
            print(action)
        result = env.step(action)
        total += result.reward
        finished = result.terminated or result.truncated
        observation = result.observation
        if result.reward and not finished:  # a game with turn credit pays progress as it is made
            print(f"(+{result.reward:.2f})")
    if finished and observation:
        print(observation)
    verdict = "solved" if total >= env.success_threshold else "not solved"
    print(f"\nreward {total:.2f} ({verdict}); answer: {info.get('answer', '')}")
    return 0


def _agent_plays(args: argparse.Namespace) -> int:
    """`lifelong play GAME --agent RUN_DIR [--show-plan]`: one game played by a run's agent."""
    import random

    import torch

    from lifelong.envs.registry import make
    from lifelong.guard.checkpoints import CheckpointRing
    from lifelong.loop.actor import Job, LocalActor
    from lifelong.loop.runtime import RunConfig
    from lifelong.model.loading import load_model
    from lifelong.model.policy import Policy
    from lifelong.world.model import new_world_model
    from lifelong.world.planner import Planner, describe_plan, plan_for_effort

    torch.set_num_threads(args.threads)
    run_dir = Path(args.agent)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"--agent {run_dir} is not a run folder (no config.json)", "pass a folder under runs/")
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    knobs = _knobs_from_args(args.knob or [])
    make(args.env, **knobs)  # a bad name or knob fails here, before any model loads
    model, tokenizer, name = load_model(config.model)
    policy = Policy.for_config(model, tokenizer, name, config)
    ring = CheckpointRing(run_dir / "checkpoints")
    checkpoint = ring.latest_good()
    if checkpoint is not None:
        ring.restore(checkpoint, policy, None)
    world_dir = Path(args.world) if args.world is not None else run_dir / "world"
    decide = None
    if args.show_plan or args.world is not None or world_dir.is_dir():
        world = new_world_model(config.model, config.world.model)  # the run's world-model settings
        world.load(world_dir)
        on_plan = (
            (lambda plan: print(f"game: {plan.state.observation}\n{describe_plan(plan)}\n")) if args.show_plan else None
        )
        decide = Planner(policy, world, plan_for_effort(args.plan_effort), on_plan=on_plan).decide
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    version = f"version {checkpoint.step}" if checkpoint is not None else "no checkpoint: the pretrained model"
    print(f"{args.env} (seed {seed}) played by {run_dir.name} ({version}){', planning' if decide else ''}\n")
    actor = LocalActor(policy, lambda _: make(args.env, **knobs), torch.Generator().manual_seed(seed), decide)
    episode = actor.play([Job(args.env, seed)], config.generation(0.0))[0]
    for n, turn in enumerate(episode.turns if not args.show_plan else (), 1):  # --show-plan printed them live
        paid = f" (+{turn.reward:.2f})" if turn.reward and n < len(episode.turns) else ""
        print(f"game: {turn.observation}\nagent [{n}]: {turn.completion.answer}{paid}\n")
    print(f"game: {episode.info.get('last_observation', '')}")
    verdict = "solved" if episode.success else "not solved"
    print(f"\nreward {episode.reward:.2f} ({verdict}) in {len(episode.turns)} moves")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lifelong.serve.config import ServeConfig
    from lifelong.serve.server import run_server

    settings: dict[str, Any] = {}
    if args.config:
        try:
            settings = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            fix = "pass a JSON file of ServeConfig fields"
            raise ConfigError(f"cannot read --config {args.config} ({exc})", fix) from exc
    keys = []
    for item in args.key or []:
        tenant, sep, key = item.partition("=")
        if not sep or not tenant or not key:
            raise ConfigError(f"--key {item!r} is not TENANT=KEY", "e.g. --key alice=sk-alice-secret")
        keys.append((tenant, key))
    flags: dict[str, Any] = {
        "store": args.store,
        "database": args.database,
        "model": args.model,
        "host": args.host,
        "port": args.port,
        "keys_file": args.keys,
        "keys": keys or None,
        "operator_keys": args.operator_key or None,
        "expose_reasoning": args.expose_reasoning or None,
        "reasoning_effort": args.reasoning_effort,
        "probes_file": args.probes,
        "threads": args.threads,
        "unit": args.unit,
        "sampler_precision": args.sampler_precision,
        "learner_precision": args.learner_precision,
    }
    settings |= {k: v for k, v in flags.items() if v is not None}
    if args.no_learn:
        settings["learner"] = {**settings.get("learner", {}), "enabled": False}
    try:
        config = ServeConfig.from_dict(settings)
    except TypeError as exc:
        raise ConfigError(f"--config has an unknown setting ({exc})", "use the field names of ServeConfig") from exc

    def announce(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    run_server(config, announce)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from lifelong.evaluate.compare import summary_line, write_comparison
    from lifelong.evaluate.harness import run_methods
    from lifelong.evaluate.seeds import choose_baseline, parse_seeds, run_seeds, seed_summary_line, write_seed_report
    from lifelong.loop.runtime import METHODS
    from lifelong.model.loading import load_model, resolve_model_folder
    from lifelong.model.policy import Policy

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = (*METHODS, "trl")
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        named = ", ".join(unknown) or "(none given)"
        raise ConfigError(f"unknown method(s) {named}", f"choose from {', '.join(known)}")
    if args.seed is not None and args.seeds is not None:
        raise ConfigError("both --seed and --seeds given", "pass --seed S for one seed or --seeds 0,1,2 for several")
    if args.baseline is not None and args.seeds is None:
        raise ConfigError("--baseline is only used with --seeds", "add --seeds 0,1,2, or leave --baseline out")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    baseline = choose_baseline(methods, args.baseline)
    stream = _stream_from_args(args)
    out = Path(args.out or Path("reports") / f"{stream.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    progress = ConsoleProgress(enabled=not args.quiet)
    resolve_model_folder(args.model, announce=progress.note)
    external = {}
    if "trl" in methods:
        from lifelong.evaluate.trl_runner import trl_runner

        external["trl"] = trl_runner(args.model, progress.note)

    def make_policy() -> Policy:
        model, tokenizer, name = load_model(args.model)
        return Policy(
            model,
            tokenizer,
            name=name,
            unit=args.unit,
            sampler_precision=args.sampler_precision,
            learner_precision=args.learner_precision,
        )

    if seeds is not None:
        try:
            summary = run_seeds(
                stream,
                methods,
                seeds,
                make_policy,
                out,
                {"model": args.model, "unit": args.unit},
                baseline,
                lambda s, m: progress.note(f"seed {s}, method {m}"),
                progress,
                external,
            )
        finally:
            progress.stop()
        page = write_seed_report(summary, stream.name, out)
        if not args.quiet:
            for m, stats in summary.stats.items():
                means = {k: round(e.mean, 4) for k, e in stats.items()}
                progress.console.print(f"{m:10s} mean over seeds {means}", highlight=False)
            progress.console.print(f"report: {page}")
        if args.json:
            print(seed_summary_line(summary, stream.name))
        return 0
    settings = {"model": args.model, "unit": args.unit, "seed": 0 if args.seed is None else args.seed}
    try:
        results = run_methods(
            stream, methods, make_policy, out, settings, lambda m: progress.note(f"method {m}"), progress, external
        )
    finally:
        progress.stop()
    page = write_comparison(results, stream.name, out)
    if not args.quiet:
        for r in results:
            progress.console.print(f"{r.method:10s} {r.summary()}", highlight=False)
        progress.console.print(f"report: {page}")
    if args.json:
        print(summary_line(results, stream.name))
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    import torch

    if args.store is not None or args.tenant is not None:
        return _consolidate_tenant(args)
    if args.run_dir is None:
        raise ConfigError(
            "consolidate needs a run folder or a serving tenant",
            "pass RUN_DIR, or --store DIR --tenant NAME for a `lifelong serve` store",
        )
    from lifelong.loop.consolidate import consolidate
    from lifelong.loop.runtime import RunConfig, Runtime
    from lifelong.model.loading import load_model
    from lifelong.model.policy import Policy

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.json)", "pass a folder under runs/")
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    model, tokenizer, name = load_model(config.model)
    runtime = Runtime(config, Policy.for_config(model, tokenizer, name, config), run_dir)
    step = runtime.restore()
    report = consolidate(runtime, rounds=args.rounds)
    runtime.checkpoint(step, good=False)  # the gate judges the consolidated adapters at the next evaluation
    print(json.dumps(report.__dict__) if args.json else report)
    return 0


def _consolidate_tenant(args: argparse.Namespace) -> int:
    """`lifelong consolidate --store DIR --tenant T`: one consolidation of the tenant's memory, with
    the model and settings the server was started with (<store>/serve.json), as its worker would."""
    import fcntl

    import torch

    from lifelong.memory.store import CONSOLIDATION_METRIC, FORGOTTEN_METRIC, ExperienceStore
    from lifelong.serve.config import ServeConfig, check_tenant
    from lifelong.serve.worker import build_learner
    from lifelong.types import AdapterStatus

    if args.store is None or args.tenant is None or args.run_dir is not None:
        raise ConfigError(
            "consolidating a serving tenant takes --store and --tenant, and no RUN_DIR",
            "e.g. lifelong consolidate --store serve-data --tenant alice",
        )
    tenant, folder = check_tenant(args.tenant), Path(args.store)
    saved = folder / "serve.json"
    settings: dict[str, Any] = {}
    if saved.is_file():
        try:
            settings = json.loads(saved.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {saved} ({exc})", "restore it, or start `lifelong serve` once") from exc
    elif args.database is None and not (folder / "experience.sqlite").is_file():
        raise ConfigError(f"{folder} is not a serving store", "pass the folder `lifelong serve --store` uses")
    settings |= {"store": str(folder), **({"database": args.database} if args.database else {})}
    config = ServeConfig.from_dict(settings)
    torch.set_num_threads(args.threads)
    folder.mkdir(parents=True, exist_ok=True)
    # The worker's lock: two learners on one tenant's checkpoints would overwrite each other's.
    lock = open(folder / "learner.lock", "w")  # noqa: SIM115 - held until this command ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise ConfigError(
            f"a learning worker is running on {folder}",
            "stop its server first, or let the worker consolidate: it does after new items or when the tenant is idle",
        ) from exc
    with lock, ExperienceStore(config.database_location) as store:
        # deleted items still in the weights wait too: consolidation trains their absence
        waiting = len(store.unconsolidated_memory(tenant)) + len(store.unforgotten_memory(tenant))
        record = None if waiting == 0 else build_learner(config, store).consolidate(tenant)
    summary: dict[str, Any] = {"tenant": tenant, "waiting": waiting}
    if record is not None:
        summary |= {"version": record.version, "status": record.status.value, "reason": record.reason}
        summary |= {"items": int(record.metrics.get(CONSOLIDATION_METRIC, 0))}
        summary |= {"forgotten": int(record.metrics.get(FORGOTTEN_METRIC, 0))}
    if args.json:
        print(json.dumps(summary))
    elif record is None:
        print(f"tenant {tenant}: no memory items waiting for consolidation")
    elif record.status == AdapterStatus.LIVE:
        print(f"tenant {tenant}: {record.reason} into adapter version {record.version} (live)")
    else:
        print(
            f"tenant {tenant}: consolidation rejected as version {record.version} ({record.reason}); "
            "its items stay in memory and are tried again later"
        )
    return 0


def cmd_teach(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lifelong.memory.documents import document_files, teach_files
    from lifelong.memory.store import ExperienceStore
    from lifelong.serve.config import ServeConfig, check_tenant

    check_tenant(args.tenant)
    config = ServeConfig(store=Path(args.store), database=args.database)
    files = document_files(args.paths)  # a missing path or unreadable file type fails before anything is stored
    if not files:
        raise ConfigError("no documents found in the given paths", "teach .txt, .md or .pdf files, or folders of them")
    console = Console(stderr=True)
    failed: list[str] = []
    chunks = 0
    columns = (TextColumn("teaching"), BarColumn(), MofNCompleteColumn(), TextColumn("files"), TimeRemainingColumn())
    with (
        ExperienceStore(config.database_location) as store,
        Progress(*columns, console=console, disable=args.quiet) as bar,
    ):
        task = bar.add_task("teach", total=len(files))

        def on_file(path: Path, doc: Any, why: str | None) -> None:
            nonlocal chunks
            if why is not None:
                failed.append(f"{path}: {why}")
                bar.console.print(f"[yellow]skipped[/yellow] {path}: {why}", highlight=False)
            else:
                chunks += doc.chunks
            bar.advance(task)

        taught = teach_files(store, args.tenant, files, config.max_document_bytes, on_file)
    summary = {"documents": len(taught), "chunks": chunks, "skipped": len(failed), "tenant": args.tenant}
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        console.print(f"taught {len(taught)} documents ({chunks} chunks) to tenant {args.tenant}", highlight=False)
    return 0 if taught or not failed else EXIT_BAD_INPUT


PRECISION_CHOICES = ["auto", "float32", "bfloat16"]  # model/policy.py's Precision, without importing torch


def _add_unit(parser: argparse.ArgumentParser, default: str | None = "lora") -> None:
    parser.add_argument(
        "--unit",
        choices=["lora", "memory", "full"],
        default=default,
        help="what learns: LoRA adapters, memory-layer values (sparse), or every weight (default: lora)",
    )
    # The defaults are RunConfig's (tests/test_cli.py checks); serve leaves them to its ServeConfig,
    # which decodes in fp32 unless asked.
    parser.add_argument(
        "--sampler-precision",
        choices=PRECISION_CHOICES,
        default=default and "float32",
        help="the dtype the sampler decodes in; auto = bfloat16 where the CPU or GPU has bf16 units "
        "(faster; default: float32)",
    )
    parser.add_argument(
        "--learner-precision",
        choices=PRECISION_CHOICES,
        default=default and "float32",
        help="the dtype the learners' forwards and backwards compute in, over fp32 weights (default: float32)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifelong", description="An LM agent that keeps learning while it works.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="act and learn on a stream of tasks")
    run.add_argument(
        "--stream", default="demo", help="a named stream (demo, default) or a stream YAML file (default: demo)"
    )
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
    _add_unit(run)
    run.add_argument(
        "--method",
        default="lifelong",
        choices=["lifelong", "grpo", "sft", "memory", "frozen"],
        help="what to do with experience (default: lifelong = GRPO + anchor + guard + rehearsal + consolidation)",
    )
    run.add_argument(
        "--world-model",
        action="store_true",
        help="learn a world model of the run's games (saved in RUN_DIR/world; `lifelong play --agent` plans with it)",
    )
    run.add_argument(
        "--world-auxiliary", action="store_true", help="the policy's updates also predict the games' replies"
    )
    run.add_argument(
        "--world-imagined",
        type=int,
        default=0,
        metavar="N",
        help="Dyna: N episodes per item played inside the world model and learnt from (needs --world-model)",
    )
    run.add_argument(
        "--turn-credit",
        action="store_true",
        help="games pay progress on the move that made it, and each move learns from what followed it",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    run.add_argument("--runs-dir", default="runs")
    run.add_argument("--store", help="experience store: a postgresql:// URL (default: SQLite in the run folder)")
    run.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    run.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    run.add_argument("--max-steps", type=int, help="stop after this many updates (the run can be resumed)")
    run.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument(
        "--ray", action="store_true", help="run on Ray: a learner actor + rollout-worker actors (local Ray by default)"
    )
    run.add_argument("--ray-address", help="join a running Ray cluster (implies --ray): auto, or ray://HEAD:10001")
    run.add_argument("--ray-workers", type=int, default=2, help="rollout-worker actors with --ray (default: 2)")
    run.add_argument(
        "--max-staleness",
        type=int,
        default=1,
        help="with --ray: updates a prefetched episode may lag the learner; 0 = on-policy (default: 1)",
    )
    run.add_argument(
        "--sampler",
        choices=["torch", "vllm"],
        default="torch",
        help="vllm: sample on an NVIDIA GPU with vLLM (pip install 'lifelong[gpu]') (default: torch)",
    )
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="compare methods on a stream: HTML report, PNGs, results.json")
    ev.add_argument("--stream", default="default", help="a named stream or a stream YAML file (default: default)")
    ev.add_argument("--tasks", help="comma-separated environment names, one stage each (instead of --stream)")
    ev.add_argument("--methods", default="frozen,memory,sft,grpo,lifelong", help="comma-separated; also: trl")
    ev.add_argument("--episodes", type=int, help="training episodes per stage (overrides the stream)")
    ev.add_argument("--probe-size", type=int, help="held-out items per task")
    ev.add_argument("--model", help="a local Hugging Face model folder (default: the embedded SmolLM2-135M)")
    ev.add_argument("--out", help="report folder (default: reports/<stream>-<time>); an unfinished one is resumed")
    ev.add_argument("--seed", type=int, help="the seed of a one-seed evaluation (default: 0)")
    ev.add_argument(
        "--seeds", help="comma-separated seeds, e.g. 0,1,2: each into <out>/seed-<s>/, then mean ± SE over them"
    )
    ev.add_argument(
        "--baseline", help="with --seeds: the method others are paired with (default: grpo if run, else the first)"
    )
    _add_unit(ev)
    ev.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    ev.add_argument("--json", action="store_true", help="print the results as one JSON line, last on stdout")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    sleep = sub.add_parser(
        "consolidate", help="distil a run's memory into its adapters, or a serving tenant's memory into its adapter"
    )
    sleep.add_argument("run_dir", nargs="?", help="a run folder: distil its memory, then prune memory")
    sleep.add_argument("--store", help="instead of RUN_DIR: the folder `lifelong serve --store` uses")
    sleep.add_argument("--tenant", help="with --store: whose memory to consolidate")
    sleep.add_argument(
        "--database", help="with --store: a postgresql:// URL, if the server uses one (default: its serve.json's)"
    )
    sleep.add_argument("--rounds", type=int, default=3)
    sleep.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    sleep.add_argument("--json", action="store_true")
    sleep.set_defaults(func=cmd_consolidate)

    report = sub.add_parser("report", help="rebuild report.md and the learning curve of a run")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    envs = sub.add_parser("envs", help="list environments")
    envs.add_argument("--json", action="store_true")
    envs.set_defaults(func=cmd_envs)

    play = sub.add_parser("play", help="play an environment yourself in the terminal (actions from stdin)")
    play.add_argument("env", help="an environment name from `lifelong envs`, e.g. guess_number or rg:chain_sum")
    play.add_argument("--seed", type=int, help="which item or game (default: random)")
    play.add_argument("--knob", action="append", metavar="NAME=VALUE", help="a difficulty knob; repeat for more")
    play.add_argument("--agent", metavar="RUN_DIR", help="let a run's agent play (its newest good checkpoint)")
    play.add_argument("--world", metavar="DIR", help="the agent's world model (default: RUN_DIR/world, if there)")
    play.add_argument("--show-plan", action="store_true", help="print each imagined move before the real one")
    play.add_argument(
        "--plan-effort", choices=["low", "medium", "high"], default="low", help="planning width and depth (low)"
    )
    play.add_argument("--threads", type=int, default=2, help="torch threads for --agent (default: 2)")
    play.set_defaults(func=cmd_play)

    serve = sub.add_parser("serve", help="an OpenAI-compatible server that learns from feedback")
    serve.add_argument("--model", help="a local Hugging Face model folder (default: the embedded SmolLM2-135M)")
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 8000)")
    serve.add_argument("--keys", help='API keys file: {"keys": [{"key": "sk-...", "tenant": "alice"}, ...]}')
    serve.add_argument("--key", action="append", metavar="TENANT=KEY", help="an API key for a tenant (repeatable)")
    serve.add_argument("--operator-key", action="append", metavar="KEY", help="a key that may read monitor flags")
    serve.add_argument("--store", help="folder of the store, adapters and logs (default: serve-data)")
    serve.add_argument(
        "--expose-reasoning", action="store_true", help="put the raw chain of thought in responses (off by default)"
    )
    serve.add_argument(
        "--reasoning-effort", choices=["none", "low", "medium", "high"], help="default thinking budget (none)"
    )
    serve.add_argument(
        "--database", help="a postgresql:// URL for the experience store (default: <store>/experience.sqlite)"
    )
    serve.add_argument(
        "--probes", help='JSONL of {"prompt", "answer"} the guard holds every tenant to (beside its general probes)'
    )
    serve.add_argument("--no-learn", action="store_true", help="store feedback but do not learn from it")
    serve.add_argument("--threads", type=int, help="torch threads for answering (default: 2)")
    _add_unit(serve, default=None)
    serve.add_argument("--config", help="JSON file of further ServeConfig settings (learner, learning, lora, limits)")
    serve.set_defaults(func=cmd_serve)

    teach = sub.add_parser("teach", help="store documents into a serving store's memory (no server needed)")
    teach.add_argument("paths", nargs="+", metavar="PATH", help="documents (.txt, .md, .pdf) or folders of them")
    teach.add_argument(
        "--store", default="serve-data", help="the folder `lifelong serve --store` uses (default: serve-data)"
    )
    teach.add_argument(
        "--database", help="a postgresql:// URL, if the server uses one (default: <store>/experience.sqlite)"
    )
    teach.add_argument("--tenant", required=True, help="whose memory the documents go into")
    teach.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    teach.add_argument("--quiet", action="store_true", help="no progress output")
    teach.set_defaults(func=cmd_teach)
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
