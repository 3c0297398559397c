"""`lifelong eval --seeds 0,1,2`: every method on several seeds, summarised as mean ± standard error.

One seed's scores are noisy (32 held-out items per task put about 9 points of standard error on a
task's score), so a comparison is only worth reading across seeds. Each seed runs into
`<out>/seed-<s>/` exactly as a one-seed eval (its own full report); this module aggregates them:

index.html    mean ± SE per method and metric, differences from the baseline paired seed by seed,
              each task's score right after its own stage, each general-ability probe's change,
              links to every seed's own report
seeds.png     per key metric: one dot per seed and the mean ± SE, per method
results.json  the same numbers; "methods" keeps the one-seed shape, with means over the seeds
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from lifelong.errors import ConfigError
from lifelong.evaluate.compare import (
    HEADERS,
    LEVELS,
    METRIC_KEYS,
    format_metric,
    html_page,
    method_color,
    wrappable,
    write_comparison,
)
from lifelong.evaluate.harness import MethodResult, PolicyFactory, run_methods
from lifelong.loop.runtime import Progress, RunConfig
from lifelong.streams.stream import Stream

# |difference| under this is a tie: scores are multiples of 1/probe_size, so real ones are far apart
EQUAL = 1e-9
PLOTTED = ("ACC", "learning_accuracy", "BWT", "general_delta")  # the panels of seeds.png
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one per seed, so a seed can be followed across methods


@dataclass(frozen=True)
class Estimate:
    """One number over seeds: the mean, its standard error, and each seed's value (in seed order)."""

    mean: float
    # None with one seed: a spread cannot be estimated from one value, and 0.0 would read as certainty
    se: float | None
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _round(self.mean), "se": _round(self.se), "per_seed": [_round(v) for v in self.values]}


def estimate(values: Sequence[float]) -> Estimate:
    """Mean and standard error of the mean: sample standard deviation (ddof=1) over sqrt(n)."""
    if not values:
        raise ValueError("no values to estimate from")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, tuple(values))
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, math.sqrt(variance / n), tuple(values))


@dataclass(frozen=True)
class TaskPairs:
    """A method's score on each task right after its own stage, R[j, j], against the baseline's:
    one pair per (seed, task), compared on the same seed."""

    better: int
    worse: int
    equal: int  # |difference| < EQUAL
    mean_diff: float  # mean of (method - baseline) over all pairs

    def to_dict(self) -> dict[str, Any]:
        return {"better": self.better, "worse": self.worse, "equal": self.equal, "mean_diff": _round(self.mean_diff)}


@dataclass(frozen=True)
class SeedSummary:
    seeds: tuple[int, ...]
    baseline: str
    methods: tuple[str, ...]  # in the order of the first seed's results
    tasks: tuple[str, ...]  # the task of each stage
    stats: Mapping[str, Mapping[str, Estimate]]  # method -> metric of MethodResult.summary() -> over seeds
    # method other than the baseline -> metric -> (method - baseline) seed by seed: what the seed does
    # to both methods (its training items, its adapter initialisation) cancels in the difference
    paired: Mapping[str, Mapping[str, Estimate]]
    new_task: Mapping[str, TaskPairs]  # method other than the baseline -> its R[j, j] pairs
    learned: Mapping[str, tuple[Estimate, ...]]  # method -> per task: R[j, j] over seeds
    # method -> general-ability probe -> change from the pretrained model over seeds; general_delta
    # is their mean, and one probe's loss can hide behind another's gain
    general: Mapping[str, Mapping[str, Estimate]]

    def to_dict(self, stream: str) -> dict[str, Any]:
        return {
            "stream": stream,
            "seeds": list(self.seeds),
            "baseline": self.baseline,
            "methods": {m: {k: _round(e.mean) for k, e in self.stats[m].items()} for m in self.methods},
            "se": {m: {k: _round(e.se) for k, e in self.stats[m].items()} for m in self.methods},
            "paired": {m: {k: e.to_dict() for k, e in d.items()} for m, d in self.paired.items()},
            "new_task": {
                "tasks": list(self.tasks),
                "mean": {m: [_round(e.mean) for e in es] for m, es in self.learned.items()},
                "se": {m: [_round(e.se) for e in es] for m, es in self.learned.items()},
                "vs_baseline": {m: p.to_dict() for m, p in self.new_task.items()},
            },
            "general": {m: {g: e.to_dict() for g, e in d.items()} for m, d in self.general.items()},
            # seed -> method -> MethodResult.summary(), from the per-seed values of `stats`
            "per_seed": {
                str(s): {m: {k: e.values[i] for k, e in self.stats[m].items()} for m in self.methods}
                for i, s in enumerate(self.seeds)
            },
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)  # means of 4-decimal scores: drop float noise only


def parse_seeds(text: str) -> tuple[int, ...]:
    """`--seeds 0,1,2` -> (0, 1, 2); anything else is a ConfigError that says what to write."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    fix = "write whole numbers separated by commas, e.g. --seeds 0,1,2"
    bad = [p for p in parts if not p.lstrip("-").isdigit()]
    if bad or not parts:
        raise ConfigError(f"--seeds {text!r}: {', '.join(map(repr, bad)) or 'no seeds'} is not a seed", fix)
    seeds = tuple(int(p) for p in parts)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} repeats a seed", "name each seed once; " + fix)
    return seeds


def choose_baseline(methods: Sequence[str], requested: str | None) -> str:
    """The method the others are paired with: `requested`, else grpo if it runs, else the first."""
    if requested is None:
        return "grpo" if "grpo" in methods else methods[0]
    if requested not in methods:
        raise ConfigError(
            f"--baseline {requested!r} is not among the methods ({', '.join(methods)})",
            "pass one of the methods given to --methods, or add it there",
        )
    return requested


def aggregate_seeds(results: Mapping[int, Sequence[MethodResult]], baseline: str | None) -> SeedSummary:
    """Mean ± SE per method and metric over seeds, and each method paired with `baseline` by seed
    (None: as `choose_baseline` picks).

    Every seed must hold the same methods on the same tasks; a mismatch is a ConfigError."""
    if not results:
        raise ConfigError("no seeds to aggregate", "give the results of at least one seed")
    seeds = tuple(sorted(results))
    by_seed = {s: _by_method(s, results[s]) for s in seeds}
    first = seeds[0]
    methods = tuple(r.method for r in results[first])
    tasks = tuple(results[first][0].tasks)
    for s in seeds:
        if set(by_seed[s]) != set(methods):
            raise ConfigError(
                f"seed {s} has methods {sorted(by_seed[s])} but seed {first} has {sorted(methods)}",
                "aggregate seeds that ran the same --methods: run the missing methods or leave the extra ones out",
            )
        for m, r in by_seed[s].items():
            if tuple(r.tasks) != tasks:
                raise ConfigError(
                    f"seed {s}, method {m} ran tasks {list(r.tasks)} but seed {first} ran {list(tasks)}",
                    "aggregate seeds of the same stream: the same --stream or --tasks for every seed",
                )
    baseline = choose_baseline(methods, baseline)
    summaries = {s: {m: r.summary() for m, r in by_seed[s].items()} for s in seeds}
    stats = {m: {k: estimate([summaries[s][m][k] for s in seeds]) for k in METRIC_KEYS} for m in methods}
    others = [m for m in methods if m != baseline]
    paired = {
        m: {k: estimate([summaries[s][m][k] - summaries[s][baseline][k] for s in seeds]) for k in METRIC_KEYS}
        for m in others
    }
    # R[j+1][j] (0-based rows after the base row): the score on task j right after its own stage
    learned = {
        m: tuple(estimate([by_seed[s][m].R[j + 1][j] for s in seeds]) for j in range(len(tasks))) for m in methods
    }
    new_task = {m: _task_pairs(by_seed, m, baseline, len(tasks)) for m in others}
    general = {m: _general(by_seed, m) for m in methods}
    return SeedSummary(seeds, baseline, methods, tasks, stats, paired, new_task, learned, general)


def _general(by_seed: Mapping[int, Mapping[str, MethodResult]], method: str) -> dict[str, Estimate]:
    runs = [d[method].general for d in by_seed.values()]
    probes = [g for g in runs[0] if all(g in r for r in runs)]  # the same stream has the same probes
    return {g: estimate([r[g][1] - r[g][0] for r in runs]) for g in probes}


def _by_method(seed: int, results: Sequence[MethodResult]) -> dict[str, MethodResult]:
    named = {r.method: r for r in results}
    if len(named) != len(results) or not results:
        raise ConfigError(
            f"seed {seed} has {'no results' if not results else 'a method twice'}",
            "give each seed one result per method",
        )
    return named


def _task_pairs(by_seed: Mapping[int, Mapping[str, MethodResult]], method: str, baseline: str, T: int) -> TaskPairs:
    diffs = [d[method].R[j + 1][j] - d[baseline].R[j + 1][j] for d in by_seed.values() for j in range(T)]
    return TaskPairs(
        better=sum(x >= EQUAL for x in diffs),
        worse=sum(x <= -EQUAL for x in diffs),
        equal=sum(abs(x) < EQUAL for x in diffs),
        mean_diff=sum(diffs) / len(diffs),
    )


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def run_seeds(
    stream: Stream,
    methods: Sequence[str],
    seeds: Sequence[int],
    make_policy: PolicyFactory,
    out: Path,
    settings: dict[str, Any] | None = None,
    baseline: str | None = None,
    on_start: Callable[[int, str], None] | None = None,
    progress: Progress | None = None,
    external: dict[str, Callable[[RunConfig, Path], None]] | None = None,
) -> SeedSummary:
    """Each seed as a one-seed eval into `<out>/seed-<s>/` (resumed, or read back when finished),
    with its own report; returns their aggregate (the caller writes it with `write_seed_report`)."""
    results: dict[int, list[MethodResult]] = {}
    for seed in seeds:
        folder = seed_dir(out, seed)
        start = None if on_start is None else partial(on_start, seed)
        results[seed] = run_methods(
            stream, methods, make_policy, folder, {**(settings or {}), "seed": seed}, start, progress, external
        )
        write_comparison(results[seed], stream.name, folder)  # written now: a later seed may fail
    return aggregate_seeds(results, baseline)


# --- the report --------------------------------------------------------------------------------


def _se_text(key: str, se: float | None) -> str:
    if se is None:
        return ""
    return f" ± {se:.1f}" if key == "episodes_per_min" else f" ± {100 * se:.1f}"


def _diff_text(key: str, value: float) -> str:
    return f"{value:+.1f}" if key == "episodes_per_min" else f"{100 * value:+.1f}"


def _clear(e: Estimate) -> bool:
    """The difference is more than 2 SE from zero (never with one seed)."""
    return e.se is not None and abs(e.mean) > 2 * e.se


def plot_seeds(summary: SeedSummary, out: Path) -> Path:
    methods = summary.methods
    n = len(methods)
    rotate = max(len(m) for m in methods) > 9  # long names would touch their neighbours when flat
    panel_width = max(2.8, 0.8 * n + 1.3)
    # one row while it stays about page-wide (the page scales the image to fit), else two by two
    cols = len(PLOTTED) if panel_width * len(PLOTTED) <= 13 else 2
    rows = -(-len(PLOTTED) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_width * cols, 0.4 + 3.6 * rows), squeeze=False)
    k = len(summary.seeds)
    # dots left of each method's slot and the mean ± SE right of it, so neither hides the other
    offsets = [-0.12 + 0.16 * (i / (k - 1) - 0.5) if k > 1 else -0.12 for i in range(k)]
    for ax, key in zip(axes.flat, PLOTTED, strict=True):
        for x, m in enumerate(methods):
            e = summary.stats[m][key]
            for i, v in enumerate(e.values):
                ax.scatter(
                    x + offsets[i],
                    100 * v,
                    s=22,
                    color=method_color(m),
                    alpha=0.8,
                    zorder=3,
                    marker=_MARKERS[i % len(_MARKERS)],
                    edgecolors="none",
                )
            yerr = None if e.se is None else 100 * e.se
            ax.errorbar(
                x + 0.18,
                100 * e.mean,
                yerr=yerr,
                fmt="_",
                markersize=14,
                color="black",
                capsize=4,
                elinewidth=1.3,
                markeredgewidth=2,
                zorder=4,
            )
        if key not in LEVELS:
            ax.axhline(0, color="black", linewidth=0.8, alpha=0.6)
        ax.set_xticks(range(n), methods, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_title(f"{HEADERS.get(key, key)} ({'level' if key in LEVELS else 'change'})", fontsize=10)
        ax.set_ylabel("points")
        ax.grid(axis="y", alpha=0.3)
    handles = [
        Line2D([], [], linestyle="none", marker=_MARKERS[i % len(_MARKERS)], color="#555", label=f"seed {s}")
        for i, s in enumerate(summary.seeds)
    ]
    se_label = "mean ± SE" if k > 1 else "mean (one seed: no SE)"
    handles.append(
        Line2D([], [], linestyle="none", marker="_", markersize=14, markeredgewidth=2, color="black", label=se_label)
    )
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (0.4 + 3.6 * rows)))  # room for the legend on top
    path = out / "seeds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _html(summary: SeedSummary, stream: str, figure: Path) -> str:
    n = len(summary.seeds)
    head = "".join(f"<th>{html.escape(HEADERS.get(k, k))}</th>" for k in ["method", *METRIC_KEYS])
    rows = "".join(
        f"<tr><td><b>{html.escape(m)}</b></td>"
        + "".join(f"<td>{format_metric(k, e.mean)}{_se_text(k, e.se)}</td>" for k, e in summary.stats[m].items())
        + "</tr>"
        for m in summary.methods
    )
    base = html.escape(summary.baseline)
    paired_rows = "".join(
        f"<tr><td><b>{html.escape(m)}</b> &minus; {base}</td>"
        + "".join(
            f"<td>{'<b>' if _clear(e) else ''}{_diff_text(k, e.mean)}{_se_text(k, e.se)}{'</b>' if _clear(e) else ''}"
            "</td>"
            for k, e in summary.paired[m].items()
        )
        + "</tr>"
        for m in summary.paired
    )
    task_head = "".join(f"<th>{wrappable(t)}</th>" for t in summary.tasks)
    task_rows = "".join(
        f"<tr><td><b>{html.escape(m)}</b></td>"
        + "".join(
            f"<td>{format_metric('learning_accuracy', e.mean)}{_se_text('learning_accuracy', e.se)}</td>"
            for e in summary.learned[m]
        )
        + "</tr>"
        for m in summary.methods
    )
    pair_rows = "".join(
        f"<tr><td><b>{html.escape(m)}</b> vs {base}</td><td>{p.better}</td><td>{p.worse}</td><td>{p.equal}</td>"
        f"<td>{100 * p.mean_diff:+.1f}</td></tr>"
        for m, p in summary.new_task.items()
    )
    probes = list(dict.fromkeys(g for d in summary.general.values() for g in d))
    general_rows = "".join(
        f"<tr><td><b>{html.escape(m)}</b></td>"
        + "".join(
            f"<td>{_diff_text('general_delta', e.mean)}{_se_text('general_delta', e.se)}</td>"
            if e is not None
            else "<td></td>"
            for e in (summary.general[m].get(g) for g in probes)
        )
        + "</tr>"
        for m in summary.methods
    )
    general_table = (
        f"""<h2>General ability</h2>
<p class="note">Change on each general-ability probe (never trained on) from the pretrained model, mean over
the seeds; general Δ above is their mean.</p>
<table><tr><th>method</th>{"".join(f"<th>{html.escape(g)}</th>" for g in probes)}</tr>{general_rows}</table>"""
        if probes
        else ""
    )
    links = " · ".join(f'<a href="seed-{s}/index.html">seed {s}</a>' for s in summary.seeds)
    seeds_text = ", ".join(map(str, summary.seeds))
    if n > 1:
        se_note = (
            f"± is the standard error of the mean over the {n} seeds (sample standard deviation / √{n}). "
            "A difference under about 2 SE cannot be told from seed-to-seed noise with this many seeds; "
            "paired differences in bold are more than 2 SE from zero."
        )
    else:
        se_note = "One seed: no standard error can be estimated; add seeds before reading differences."
    paired_table = (
        f"""<h2>Difference from {base}, seed by seed</h2>
<p class="note">Each method minus {base} on the same seed{", then mean ± SE over the seeds" if n > 1 else ""}.</p>
<table><tr>{head.replace("<th>method</th>", "<th>difference</th>", 1)}</tr>{paired_rows}</table>"""
        if summary.paired
        else ""
    )
    pairs_table = (
        f"""<p class="note">R[j, j] of each method against {base}'s on the same seed and task: {n} seeds
&times; {len(summary.tasks)} tasks = {n * len(summary.tasks)} pairs.</p>
<table><tr><th>method</th><th>better</th><th>worse</th><th>equal</th><th>mean difference</th></tr>{pair_rows}</table>"""
        if summary.new_task
        else ""
    )
    body = f"""<h1>Continual learning on stream <code>{html.escape(stream)}</code>, {n} seed{"s" if n != 1 else ""}</h1>
<p class="note">Seeds {seeds_text}, each a full one-seed evaluation with the same model, stream and budget
for every method: {links}. Scores are greedy success on held-out items, in points (percent); ACC, LA and
online are levels, the others changes; episodes/min is training throughput. Higher is better except for
forgetting; what each metric means is on every seed's page.</p>
<table><tr>{head}</tr>{rows}</table>
<p class="note">{se_note}</p>
<img src="{figure.name}" alt="metrics per seed, with mean and standard error">
{paired_table}
<h2>Learning each new task</h2>
<p class="note">Score on each task right after its own stage, R[j, j], mean over the seeds.</p>
<table><tr><th>method</th>{task_head}</tr>{task_rows}</table>
{pairs_table}
{general_table}"""
    return html_page(f"lifelong eval: {stream}, seeds {seeds_text}", body)


def write_seed_report(summary: SeedSummary, stream_name: str, out_dir: Path) -> Path:
    """index.html, seeds.png and results.json in `out_dir`; returns the page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_seeds(summary, out_dir)
    (out_dir / "results.json").write_text(json.dumps(summary.to_dict(stream_name), indent=1))
    page = out_dir / "index.html"
    page.write_text(_html(summary, stream_name, figure))
    return page


def seed_summary_line(summary: SeedSummary, stream_name: str) -> str:
    """The aggregate as one JSON line (results.json without the per-seed detail)."""
    payload = summary.to_dict(stream_name)
    del payload["per_seed"]
    return json.dumps(payload)
