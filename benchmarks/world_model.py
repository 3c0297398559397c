"""World models in the games (issue 23): does the agent learn how a game responds, and does
using what it learnt win more games at the same real-episode budget?

For each game and seed, three runs on the run path (`Runtime.run`), each `--budget` real
episodes of GRPO, evaluated greedily on the run's held-out game seeds:

  grpo   plain GRPO; beside it a world model (its own copy of the base model, its own adapter)
         learns from the run's real moves and nothing else (no game source, no `info` solution).
         The world model does not touch the policy, so this run is plain GRPO's row.
  aux    GRPO whose update also predicts the game's replies to its moves (implicit world modelling)
  dyna   GRPO that also learns from episodes played inside the world model (4 per item a step)
  plan   the grpo run's policy on the same held-out seeds, each move chosen by the planner with the
         grpo run's world model (width and depth from `--plan-effort`); no more real episodes
  turns  GRPO on the game with turn credit: each move is paid the progress it made and learns from
         what followed it (per-turn advantages); held-out success is the same win as grpo's

The world model is scored on held-out moves: the grpo policy plays the held-out seeds once more,
sampling (so the moves vary), and each move's real reply is compared with the imagined one, beside
the copy-the-last-message baseline; reward and end of game are scored apart from the message.

    python benchmarks/world_model.py [--games maze,ta:FrozenLake-v0] [--seeds 3] [--variants grpo,turns] [--json]

Last line with `--json`: {"games": [{"game", "wm_accuracy", "copy_accuracy", "grpo", "aux",
"plan", "dyna", "turns", ...}, ...]} (fractions, seed means; a variant left out by `--variants` is
absent, and so are the world model's accuracies without plan, which measures them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lifelong.cli import ConsoleProgress, _quiet_libraries
from lifelong.evaluate.seeds import estimate
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.actor import Job, LocalActor, play
from lifelong.loop.config import RunConfig
from lifelong.loop.runtime import Runtime
from lifelong.loop.world import WorldConfig
from lifelong.model.loading import load_model
from lifelong.model.policy import Policy
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.world.planner import Planner, plan_for_effort
from lifelong.world.transitions import accuracy, all_transitions, copy_prediction

# Each game at a size two CPU cores train in minutes: short games keep contexts short. Deterministic
# games first (their replies follow from the move alone); the default stream trains none of these
# but guess_number, whose replies depend on a secret number the world model cannot see.
GAMES: dict[str, dict[str, Any]] = {
    "maze": {"size": 3, "walls": 0.2, "max_turns": 5},
    "ta:FrozenLake-v0": {"size": 3, "num_holes": 1, "max_turns": 5},
    "ta:TowerOfHanoi-v0": {"num_disks": 2, "max_turns": 5},
    "wordle": {"length": 4, "choices": 4, "max_turns": 4},
    "guess_number": {"max_value": 8, "max_turns": 4},
}


def task_of(game: str, turn_credit: bool = False) -> Task:
    """The game at the benchmark's size (its knobs above), or as registered when not listed."""
    task = Task.of(game, **GAMES.get(game, {}))
    return task.with_turn_credit() if turn_credit else task


VARIANTS = ("grpo", "aux", "plan", "dyna", "turns")


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def paired(a: list[float], b: list[float]) -> str:
    """Mean ± SE of a - b over seeds, in points."""
    d = estimate([x - y for x, y in zip(a, b, strict=True)])
    return f"{100 * d.mean:+.1f} (one seed)" if d.se is None else f"{100 * d.mean:+.1f} ± {100 * d.se:.1f}"


def train(game: str, seed: int, variant: str, args: argparse.Namespace, out: Path) -> tuple[Runtime, Policy]:
    """One run of `variant` (grpo, aux, dyna or turns) on `game`; resumed if its folder has one."""
    task = task_of(game, turn_credit=variant == "turns")
    stream = Stream(f"world-{game}", (Stage(task, args.budget),), probe_size=args.heldout)
    world = WorldConfig(
        learn=variant == "dyna" or (variant == "grpo" and "plan" in args.variants),
        auxiliary=variant == "aux",
        imagined_per_item=args.imagined if variant == "dyna" else 0,
        updates_per_step=args.world_updates,
    )
    model, tokenizer, name = load_model()
    torch.manual_seed(seed)  # the same adapter initialisation for every variant of a seed
    config = RunConfig.for_method(
        "grpo",
        stream=stream.to_dict(),
        seed=seed,
        eval_every=0,
        world=world,
        grpo=GRPOConfig(turn_advantages=variant == "turns"),
    )
    policy = Policy.for_config(model, tokenizer, name, config)
    run_dir = out / f"seed{seed}" / game.replace(":", "_") / variant
    progress = ConsoleProgress(enabled=not args.quiet)
    runtime = Runtime(config, policy, run_dir, progress)
    runtime.run(resume=(run_dir / "config.json").is_file())
    progress.stop()
    return runtime, policy


def one_game(game: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The runs and the planner on `game` for one seed: the table's row for that seed."""
    t0 = time.time()
    row: dict[str, Any] = {"game": task_of(game).label, "seed": seed, "minutes": {}}
    # grpo last: its policy and world model are used below
    for variant in [v for v in ("aux", "dyna", "turns") if v in args.variants] + ["grpo"]:
        start = time.time()
        runtime, policy = train(game, seed, variant, args, out)
        label = runtime.stream.stages[0].task.label
        row[variant] = runtime.summary().after[label]
        row["before"] = runtime.summary().before[label]
        row["minutes"][variant] = (time.time() - start) / 60
    if "plan" in args.variants:
        row |= plan_and_world(row, runtime, policy, seed, args)
    row["minutes"]["total"] = (time.time() - t0) / 60
    done_file(out, game, seed).write_text(json.dumps(row, indent=1))
    return row


def plan_and_world(
    row: dict[str, Any], runtime: Runtime, policy: Policy, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The grpo run's world model scored on held-out moves, and its policy planning with it."""
    assert runtime.world is not None and runtime.world.model is not None
    world = runtime.world.model

    # Held-out moves: the trained policy samples on the held-out seeds (never trained on).
    probe = next(iter(runtime.evaluation.probes.values()))
    generator = torch.Generator().manual_seed(seed)
    jobs = [Job(row["game"], s, split="probe") for s in probe.seeds]
    held = all_transitions(play(policy, jobs, runtime.make_env, runtime.config.generation(1.0), generator))
    wm = accuracy(world.imagine([t.state for t in held], [t.action for t in held]), held)
    copy = accuracy([copy_prediction(t.state) for t in held], held)

    start = time.time()
    planner = Planner(policy, world, plan_for_effort(args.plan_effort), generator)
    _, planned = runtime.evaluation.play(LocalActor(policy, runtime.make_env, decide=planner.decide))
    row["minutes"]["plan"] = (time.time() - start) / 60
    return {
        "plan": planned[row["game"]],
        "wm_accuracy": wm.observation,
        "wm_reward_accuracy": wm.reward,
        "wm_done_accuracy": wm.done,
        "copy_accuracy": copy.observation,
        "copy_reward_accuracy": copy.reward,
        "copy_done_accuracy": copy.done,
        "heldout_moves": wm.moves,
        "world_updates": world.learner.step,
        "imagined_moves_per_real_move": planner.imagined_moves / max(planner.plans, 1),
    }


def done_file(out: Path, game: str, seed: int) -> Path:
    return out / f"seed{seed}" / game.replace(":", "_") / "world_row.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", default=",".join(GAMES), help="comma-separated environment names")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds run from here (split one table over processes)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"which of {', '.join(VARIANTS)} to run (grpo always runs)"
    )
    parser.add_argument("--budget", type=int, default=256, help="real training episodes per game and seed")
    parser.add_argument("--heldout", type=int, default=64, help="held-out game seeds per game")
    parser.add_argument("--world-updates", type=int, default=16, help="world-model updates a step (16 moves each)")
    parser.add_argument("--imagined", type=int, default=4, help="dyna: imagined episodes per item a step")
    parser.add_argument("--plan-effort", default="low", help="planner width and depth: low, medium or high")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="folder for run folders and world models (resumable)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.variants = ["grpo"] + [v for v in args.variants.split(",") if v and v != "grpo"]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="lifelong-world-model-"))
    games = [g for g in args.games.split(",") if g]
    runs = [(g, s) for s in range(args.first_seed, args.first_seed + args.seeds) for g in games]
    rows: list[dict[str, Any]] = []
    started = time.time()
    for n, (game, seed) in enumerate(runs):
        row_file = done_file(out, game, seed)
        saved = json.loads(row_file.read_text()) if row_file.is_file() else {}
        if all(v in saved for v in args.variants):  # else its finished runs resume at their end
            rows.append(saved)
            continue
        eta = (time.time() - started) / n * (len(runs) - n) if n else math.nan
        print(f"run {n + 1}/{len(runs)}: {game} seed {seed} (eta {eta / 60:.0f} min)", file=sys.stderr)
        rows.append(one_game(game, seed, args, out))

    variants = [v for v in VARIANTS if v in args.variants]
    world_columns = ("wm_accuracy", "copy_accuracy", "wm_reward_accuracy", "wm_done_accuracy")
    print(f"\nheld-out success after {args.budget} real episodes ({args.heldout} held-out games, {args.seeds} seeds)")
    print(
        f"{'game':28s}"
        + "".join(f"{v:>8s}" for v in ("before", *variants))
        + f"{'world':>8s}{'copy':>7s}{'reward':>8s}{'end':>6s}"
    )
    table = []
    for game in dict.fromkeys(r["game"] for r in rows):
        mine = [r for r in rows if r["game"] == game]
        avg = {k: mean([r[k] for r in mine]) for k in mine[0] if isinstance(mine[0][k], float | int) and k != "seed"}
        print(
            f"{game:28s}" + "".join(f"{100 * avg[v]:7.1f}%" for v in ("before", *variants))
            + "".join(f"{100 * avg[k]:7.1f}%" if k in avg else f"{'-':>8s}" for k in world_columns)
        )  # fmt: skip
        for v in variants[1:]:
            print(f"  {v} - grpo, paired over seeds: {paired([r[v] for r in mine], [r['grpo'] for r in mine])} points")
        table.append(
            {"game": game} | {k: round(avg[k], 4) for k in world_columns[:2] if k in avg}
            | {v: round(avg[v], 4) for v in variants}
            | {"seeds": len(mine), "minus_grpo": {v: [round(r[v] - r["grpo"], 4) for r in mine] for v in variants[1:]}}
        )  # fmt: skip
    print(f"(world and copy: one-step message accuracy on held-out moves; run folders in {out})")
    if args.json:
        print(json.dumps({"games": table}))


if __name__ == "__main__":
    main()
