"""A run's results as a person reads them: a learning-curve PNG and a markdown report.

Both are made from `metrics.jsonl` (and the report's monitor section from `flags.jsonl`, the
reasoning monitor's flags on the episodes learned from), so a report can be rebuilt for any run
folder (`lifelong report RUN_DIR`), including one that crashed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return _read_jsonl(run_dir / "metrics.jsonl")


def read_flags(run_dir: Path) -> list[dict[str, Any]]:
    """The reasoning monitor's flags on the run's training episodes (loop/runtime.py `watch`)."""
    return _read_jsonl(run_dir / "flags.jsonl")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
    return records


def _evals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "eval":
            by_step[r["step"]] = r  # a resumed run may repeat an eval; keep the newest
    return [by_step[s] for s in sorted(by_step)]


def plot_learning_curve(run_dir: Path, out: Path | None = None) -> Path:
    """Held-out success per task (top) and training reward (bottom) against episodes played."""
    records = read_metrics(run_dir)
    evals = _evals(records)
    updates = [r for r in records if r.get("type") == "update"]
    out = out or run_dir / "learning_curve.png"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    tasks = list(dict.fromkeys(t for e in evals for t in e["scores"]))
    for task in tasks:
        xs = [e["episodes"] for e in evals if task in e["scores"]]
        ys = [100 * e["scores"][task] for e in evals if task in e["scores"]]
        top.plot(xs, ys, marker="o", label=task)
    stages = [(u["episodes"], u["stage"]) for u in updates]
    for i in range(1, len(stages)):
        if stages[i][1] != stages[i - 1][1]:  # mark where the stream moves to a new stage
            for ax in (top, bottom):
                ax.axvline(stages[i - 1][0], color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("held-out success (%)")
    top.set_ylim(-3, 103)
    top.set_title("Learning while acting: held-out probes (greedy)")
    top.grid(alpha=0.3)
    if tasks:
        top.legend(loc="best", fontsize=9)
    if updates:
        xs = [u["episodes"] for u in updates]
        ys = [100 * u.get("success/train", 0.0) for u in updates]
        window = 5
        smooth = [
            sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))
        ]
        bottom.plot(xs, ys, color="tab:blue", alpha=0.3, label="per update")
        bottom.plot(xs, smooth, color="tab:blue", label=f"mean of last {window}")
        bottom.legend(loc="best", fontsize=9)
    bottom.set_xlabel("episodes played")
    bottom.set_ylabel("training success (%)\n(sampled, T=1)")
    bottom.set_ylim(-3, 103)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


CURRICULUM = "curriculum/"  # loop/curriculum.METRIC: the prefix of a task's training level in an update record


def plot_curriculum(run_dir: Path, out: Path | None = None) -> Path | None:
    """The level each task was trained at (0 = as the stream set it; higher = easier) against
    episodes played; None when the run had no curriculum."""
    updates = [r for r in read_metrics(run_dir) if r.get("type") == "update"]
    tasks = list(dict.fromkeys(k[len(CURRICULUM) :] for u in updates for k in u if k.startswith(CURRICULUM)))
    if not tasks:
        return None
    out = out or run_dir / "curriculum.png"
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for task in tasks:
        points = [(u["episodes"], u[CURRICULUM + task]) for u in updates if CURRICULUM + task in u]
        ax.step([x for x, _ in points], [y for _, y in points], where="pre", marker=".", label=task)
    ax.set_xlabel("episodes played")
    ax.set_ylabel("levels easier than set")
    ax.set_ylim(bottom=-0.2)
    ax.set_title("Automatic curriculum: the difficulty each task was trained at")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(run_dir: Path, summary: dict[str, Any], config: dict[str, Any]) -> Path:
    """report.md: what was run, before/after per task, the curve, the update health in brief and
    the reasoning monitor's flags."""
    records = read_metrics(run_dir)
    updates = [r for r in records if r.get("type") == "update"]
    curve = plot_learning_curve(run_dir)
    lines = [
        f"# Run {run_dir.name}",
        "",
        f"Model `{summary['model']}`, stream `{config['stream']['name']}`, {summary['episodes']} training episodes "
        f"in {summary['minutes']:.1f} minutes; reasoning effort `{config['reasoning_effort']}`.",
        "",
        "## Held-out success (greedy, items never used for learning)",
        "",
        "| task | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    for task in summary["tasks"]:
        b, a = summary["before"].get(task), summary["after"].get(task)
        if b is None or a is None:
            lines.append(f"| {task} | {b} | {a} | |")
            continue
        lines.append(f"| {task} | {100 * b:.1f}% | {100 * a:.1f}% | {100 * (a - b):+.1f} pts |")
    lines += ["", f"![learning curve]({curve.name})", ""]
    trace = plot_curriculum(run_dir)
    if trace is not None:
        lines += [
            "## Curriculum",
            "",
            "A task whose attempts all failed in a step was trained on an easier version from the next step on",
            "(halfway down the rest of its ladder, or one level), and one level harder again once half its attempts",
            "succeeded; the probes above stay at the stream's setting.",
            "",
            f"![curriculum]({trace.name})",
            "",
        ]
    if updates:
        applied = sum(u["applied"] for u in updates)
        skipped = [u for u in updates if not u["applied"]]
        mean = lambda key: sum(u.get(key, 0.0) for u in updates if u["applied"]) / max(applied, 1)  # noqa: E731
        lines += [
            "## Updates",
            "",
            f"{len(updates)} steps, {applied} updates applied"
            + (f", {len(skipped)} skipped (no reward spread in any group)" if skipped else "")
            + ".",
            "",
            "| metric | mean over applied updates |",
            "|---|---:|",
        ]
        for key in (
            "reward/mean",
            "policy/entropy",
            "kl/ref",
            "policy/clip_frac",
            "policy/sampler_mismatch",
            "grad/norm",
        ):
            lines.append(f"| `{key}` | {mean(key):.4f} |")
        lines.append("")
    lines += monitor_section(read_flags(run_dir), config)
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


def _cell(text: Any, limit: int = 160) -> str:
    """Text safe inside one markdown table cell: one line, no bare pipes, trimmed."""
    one = " ".join(str(text).split()).replace("|", "\\|")
    return one if len(one) <= limit else one[: limit - 3].rstrip() + "..."


def monitor_section(flags: list[dict[str, Any]], config: dict[str, Any], first: int = 10) -> list[str]:
    """The reasoning monitor's flags on the episodes learned from: counts by kind and the first few."""
    lines = [
        "## Reasoning monitor",
        "",
        "The monitor reads the chain of thought of every training episode before it is learned from and "
        "flags reasoning that talks about gaming the reward or contradicts the answer. Flags inform people; "
        "they never change a reward or what is learned.",
        "",
    ]
    if not flags:
        effort, budget = config.get("reasoning_effort"), config.get("thinking_tokens")
        no_chain = budget == 0 or (budget is None and effort == "none")
        lines += [
            f"No flags were raised (reasoning effort `{effort}`). At reasoning effort none there is no chain "
            "of thought to read" + (", so this run gave the monitor nothing to read." if no_chain else "."),
            "",
        ]
        return lines
    kinds = Counter(str(f.get("kind", "?")) for f in flags)
    lines += [
        f"{len(flags)} flags on {len({f.get('source') for f in flags})} episodes: "
        + ", ".join(f"{n} `{kind}`" for kind, n in kinds.most_common())
        + ".",
        "",
        f"First {min(first, len(flags))} (all in `flags.jsonl` and the run's store):",
        "",
        "| episode | task | step | turn | kind | detail |",
        "|---|---|---:|---:|---|---|",
    ]
    for f in flags[:first]:
        lines.append(
            f"| `{f.get('source', '')}` | {_cell(f.get('task', ''))} | {f.get('step', '')} | {f.get('index', '')} "
            f"| {f.get('kind', '?')} | {_cell(f.get('detail', ''))} |"
        )
    lines.append("")
    return lines
