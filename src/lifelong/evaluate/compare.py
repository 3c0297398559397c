"""The comparison report: PNGs and one HTML page a person reads, plus results.json.

matrix_<method>.png  accuracy matrix R[t, j] as a heatmap (rows: after stage t; columns: tasks)
curves.png           held-out success per task against episodes, one line per method
forgetting.png       BWT and forgetting (max variant) per method
drift.png            KL(pretrained || current) on probe prompts against episodes, per method
index.html           the table of metrics, the figures, and what each metric means
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lifelong.evaluate.harness import MethodResult

COLORS = {
    "frozen": "#7f7f7f",
    "memory": "#9467bd",
    "sft": "#d62728",
    "grpo": "#ff7f0e",
    "lifelong": "#2ca02c",
    "trl": "#1f77b4",
}


def method_color(method: str) -> str:
    return COLORS.get(method, "#17becf")


def plot_matrix(result: MethodResult, out: Path) -> Path:
    T = len(result.tasks)
    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * T, 1.2 + 0.55 * (T + 1)))
    data = [[100 * v for v in row] for row in result.R]
    image = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for t, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, t, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=9)
    ax.set_xticks(range(T), [_short(t) for t in result.tasks], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(T + 1), ["before"] + [f"after {t}" for t in range(1, T + 1)], fontsize=8)
    ax.set_xlabel("task (held-out success %)")
    ax.set_title(f"{result.method}: accuracy matrix R[t, j]", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    path = out / f"matrix_{result.method}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(label: str, width: int = 22) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def wrappable(label: str) -> str:
    """A task label whole for an HTML table (cut short, two variants of one task read alike), free
    to wrap after ( and ,."""
    return html.escape(label).replace("(", "(<wbr>").replace(",", ",<wbr>")


def plot_curves(results: Sequence[MethodResult], out: Path) -> Path:
    tasks = list(dict.fromkeys(t for r in results for t in [*r.tasks, *r.general]))
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for r in results:
            points = [(c["episodes"], 100 * c["scores"][task]) for c in r.curves if task in c["scores"]]
            if points:
                ax.plot(
                    *zip(*points, strict=True), marker="o", markersize=3, color=method_color(r.method), label=r.method
                )
        kind = " (general, never trained)" if any(task in r.general for r in results) else ""
        ax.set_title(_short(task, 34) + kind, fontsize=9)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.set_xlabel("episodes played", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out success (%)", fontsize=8)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(results), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_forgetting(results: Sequence[MethodResult], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(2.6 + 1.1 * len(results), 3.8))
    width = 0.38
    xs = range(len(results))
    bwt = [100 * r.metrics.BWT for r in results]
    forget = [100 * r.metrics.forgetting for r in results]
    ax.bar([x - width / 2 for x in xs], bwt, width, label="BWT (higher is better)", color="#4c72b0")
    ax.bar(
        [x + width / 2 for x in xs], forget, width, label="forgetting, max variant (lower is better)", color="#dd8452"
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [r.method for r in results])
    ax.set_ylabel("points")
    ax.set_title("Backward transfer and forgetting", fontsize=10)
    # below the axes: inside them the legend covers the bars
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "forgetting.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_drift(results: Sequence[MethodResult], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for r in results:
        points = [(c["episodes"], c["drift/kl_base"]) for c in r.curves if "drift/kl_base" in c]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, color=method_color(r.method), label=r.method)
    ax.set_xlabel("episodes played")
    ax.set_ylabel("KL(pretrained || current)\nnats per token")
    ax.set_title("Drift from the pretrained model on probe prompts", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "drift.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# The metrics of `MethodResult.summary()`, in the order the tables show them.
METRIC_KEYS = (
    "ACC",
    "BWT",
    "FWT",
    "forgetting",
    "learning_accuracy",
    "online_acc",
    "general_delta",
    "episodes_per_min",
)
LEVELS = ("ACC", "learning_accuracy", "online_acc")  # scores, in points; the other score metrics are changes


def format_metric(key: str, value: float) -> str:
    if key == "episodes_per_min":
        return f"{value:.1f}"
    if key in LEVELS:
        return f"{100 * value:.1f}"
    return f"{100 * value:+.1f}"


HEADERS = {
    "learning_accuracy": "LA",
    "online_acc": "online",
    "general_delta": "general Δ",
    "episodes_per_min": "episodes/min",
}


STYLE = """body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }"""


def html_page(title: str, body: str) -> str:
    """A report page: the shared head and style around `body` (HTML); `title` is plain text."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{STYLE}
</style></head><body>
{body}
</body></html>"""


def _sampling_note(probe_size: int, tasks: int) -> str:
    """How far one seed's scores can move by chance: the binomial standard error at 50% success."""
    one_task = 50 / math.sqrt(probe_size)
    mean = 50 / math.sqrt(probe_size * max(tasks, 1))
    return (
        f"Sampling noise: {probe_size} held-out items per task, so one item is {100 / probe_size:.1f} points; "
        f"the standard error of one task's score near 50% is about {one_task:.1f} points, of a mean over the "
        f"{tasks} tasks (ACC, LA) about {mean:.1f}. Differences under about twice that are within the noise "
        "of a single seed."
    )


def _html(results: Sequence[MethodResult], stream: str, figures: dict[str, Any]) -> str:
    keys = METRIC_KEYS
    head = "".join(f"<th>{HEADERS.get(k, k)}</th>" for k in ["method", *keys])
    rows = []
    for r in results:
        s = r.summary()
        cells = "".join(f"<td>{format_metric(k, s[k])}</td>" for k in keys)
        rows.append(f"<tr><td><b>{html.escape(r.method)}</b></td>{cells}</tr>")
    matrices = "".join(
        f'<figure><img src="{p.name}" alt="accuracy matrix of {m}"></figure>' for m, p in figures["matrices"]
    )
    # general_delta is a mean: one probe's loss can hide behind another's gain, so show each
    probes = sorted({g for r in results for g in r.general})
    general_head = "".join(f"<th>{html.escape(g)}</th>" for g in ["method", *probes])
    general_rows = "".join(
        f"<tr><td><b>{html.escape(r.method)}</b></td>"
        + "".join(
            f"<td>{100 * before:.1f} &rarr; {100 * after:.1f}</td>"
            for before, after in (r.general.get(g, (float("nan"), float("nan"))) for g in probes)
        )
        + "</tr>"
        for r in results
    )
    # Learning each new task: the score right after its own stage, R[j, j], beside the base b_j.
    tasks = results[0].tasks if results else []
    learned_head = "".join(
        f"<th>{wrappable(t)}<br><small>base {100 * results[0].R[0][j]:.0f}</small></th>" for j, t in enumerate(tasks)
    )
    learned_rows = "".join(
        f"<tr><td><b>{html.escape(r.method)}</b></td>"
        + "".join(f"<td>{100 * r.R[j + 1][j]:.1f}</td>" for j in range(len(r.tasks)))
        + "</tr>"
        for r in results
    )
    noise = _sampling_note(results[0].probe_size, len(tasks)) if results else ""
    body = f"""<h1>Continual learning on stream <code>{html.escape(stream)}</code></h1>
<p class="note">Same model, stream, seeds and budget for every method. Scores are greedy success on
held-out items never used for learning, in points (percent); episodes/min is training throughput.</p>
<table><tr>{head}</tr>{"".join(rows)}</table>
<p class="note">ACC: mean final score over the stream's tasks. BWT: mean change of each earlier task from
right after its stage to the end (Lopez-Paz &amp; Ranzato). FWT: score on a task just before its stage minus
the pretrained score. forgetting: best earlier score minus final (Chaudhry; Mammoth's variant; Avalanche's
variant equals -BWT). online_acc: success of training items when first met, before learning from them.
LA (learning accuracy): mean score on each task right after its own stage (Riemer et al.; per task below).
general_delta: change on general-ability probes never trained on (mean over the probes; each below).</p>
<p class="note">{noise}</p>
<h2>Learning each new task</h2>
<p class="note">Score on each task right after its own stage, R[j, j]; the pretrained score under its name.</p>
<table><tr><th>method</th>{learned_head}</tr>{learned_rows}</table>
<h2>General ability</h2>
<table><tr>{general_head}</tr>{general_rows}</table>
<h2>Learning curves</h2><img src="{figures["curves"].name}" alt="learning curves">
<h2>Forgetting</h2><img src="{figures["forgetting"].name}" alt="forgetting bars">
<h2>Drift from the pretrained model</h2><img src="{figures["drift"].name}" alt="probe drift">
<h2>Accuracy matrices</h2>{matrices}"""
    return html_page(f"lifelong eval: {stream}", body)


def write_comparison(results: Sequence[MethodResult], stream: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "matrices": [(r.method, plot_matrix(r, out)) for r in results],
        "curves": plot_curves(results, out),
        "forgetting": plot_forgetting(results, out),
        "drift": plot_drift(results, out),
    }
    payload = {"stream": stream, "methods": {r.method: r.summary() for r in results}}
    (out / "results.json").write_text(
        json.dumps({**payload, "details": {r.method: r.to_dict() for r in results}}, indent=1)
    )
    page = out / "index.html"
    page.write_text(_html(results, stream, figures))
    return page


def summary_line(results: Sequence[MethodResult], stream: str) -> str:
    return json.dumps({"stream": stream, "methods": {r.method: r.summary() for r in results}})
