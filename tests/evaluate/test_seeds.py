"""`lifelong eval --seeds`: the aggregation against hand-computed numbers, its report, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import assert_rerun_only_resumes, png_size, tiny_eval_args

from lifelong.cli import main
from lifelong.errors import ConfigError
from lifelong.evaluate.harness import MethodResult
from lifelong.evaluate.metrics import cl_metrics
from lifelong.evaluate.seeds import (
    aggregate_seeds,
    choose_baseline,
    estimate,
    parse_seeds,
    seed_summary_line,
    write_seed_report,
)


def _result(
    method: str, R: list[list[float]], general_delta: float = 0.0, tasks: tuple[str, ...] = ("a", "b")
) -> MethodResult:
    return MethodResult(
        method=method,
        tasks=list(tasks),
        R=R,
        general={"facts": (0.5, 0.5 + general_delta)},
        metrics=cl_metrics(R),
        online_acc=0.5,
        general_delta=general_delta,
        episodes=60,
        minutes=1.0,
        probe_size=4,
    )


# Two tasks, three seeds. Per seed: ACC = mean of the last row, BWT = R[2][0] - R[1][0],
# LA = (R[1][0] + R[2][1]) / 2.
GRPO = {
    0: [[0.0, 0.0], [0.5, 0.0], [0.25, 0.5]],  # ACC 0.375  BWT -0.25  LA 0.5
    1: [[0.0, 0.0], [0.75, 0.0], [0.5, 0.25]],  # ACC 0.375  BWT -0.25  LA 0.5
    2: [[0.0, 0.0], [0.5, 0.0], [0.5, 0.75]],  # ACC 0.625  BWT 0      LA 0.625
}
LIFELONG = {
    0: [[0.0, 0.0], [0.5, 0.0], [0.5, 0.75]],  # ACC 0.625  BWT 0  LA 0.625
    1: [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]],  # ACC 0.5    BWT 0  LA 0.5
    2: [[0.0, 0.0], [0.75, 0.0], [0.75, 0.75]],  # ACC 0.75   BWT 0  LA 0.75
}
GENERAL = {0: -0.1, 1: -0.2, 2: -0.3}


def _three_seeds() -> dict[int, list[MethodResult]]:
    return {
        s: [_result("grpo", GRPO[s], GENERAL[s]), _result("lifelong", LIFELONG[s], 0.0)] for s in (2, 0, 1)
    }  # not in seed order: the summary sorts them


def test_mean_and_standard_error_per_method_and_metric() -> None:
    summary = aggregate_seeds(_three_seeds(), "grpo")
    assert summary.seeds == (0, 1, 2) and summary.methods == ("grpo", "lifelong") and summary.tasks == ("a", "b")
    acc = summary.stats["grpo"]["ACC"]
    # 0.375, 0.375, 0.625: mean 0.4583; deviations -1/12, -1/12, 1/6 -> variance (ddof=1) 1/48; SE sqrt(1/48/3) = 1/12
    assert acc.values == (0.375, 0.375, 0.625)
    assert acc.mean == pytest.approx(0.375 + 0.25 / 3) and acc.se == pytest.approx(1 / 12)
    general = summary.stats["grpo"]["general_delta"]
    assert general.mean == pytest.approx(-0.2) and general.se == pytest.approx(0.1 / 3**0.5)
    assert summary.stats["lifelong"]["BWT"].mean == 0.0 and summary.stats["lifelong"]["BWT"].se == 0.0
    assert summary.stats["lifelong"]["learning_accuracy"].mean == pytest.approx(0.625)
    assert summary.stats["grpo"]["episodes_per_min"].mean == 60.0
    assert set(summary.stats["grpo"]) == set(_result("x", GRPO[0]).summary())
    facts = summary.general["grpo"]["facts"]  # each probe's change, beside their mean general_delta
    assert facts.mean == pytest.approx(-0.2) and facts.values == pytest.approx((-0.1, -0.2, -0.3))


def test_paired_differences_against_the_baseline() -> None:
    summary = aggregate_seeds(_three_seeds(), "grpo")
    assert set(summary.paired) == {"lifelong"}  # the baseline is not paired with itself
    acc = summary.paired["lifelong"]["ACC"]
    # lifelong - grpo per seed: 0.25, 0.125, 0.125 -> mean 1/6; variance (ddof=1) 1/192; SE sqrt(1/576) = 1/24
    assert acc.values == pytest.approx((0.25, 0.125, 0.125))
    assert acc.mean == pytest.approx(1 / 6) and acc.se == pytest.approx(1 / 24)
    bwt = summary.paired["lifelong"]["BWT"]  # +0.25, +0.25, 0 -> mean 1/6, SE 1/12
    assert bwt.mean == pytest.approx(1 / 6) and bwt.se == pytest.approx(1 / 12)


def test_learning_each_new_task_pairs_and_per_task_means() -> None:
    summary = aggregate_seeds(_three_seeds(), "grpo")
    # R[j+1][j], lifelong vs grpo: seed 0: .5=.5, .75>.5; seed 1: .5<.75, .5>.25; seed 2: .75>.5, .75=.75
    pairs = summary.new_task["lifelong"]
    assert (pairs.better, pairs.worse, pairs.equal) == (3, 1, 2)
    assert pairs.mean_diff == pytest.approx(0.5 / 6)
    assert [e.mean for e in summary.learned["grpo"]] == pytest.approx([1.75 / 3, 0.5])
    assert [e.mean for e in summary.learned["lifelong"]] == pytest.approx([1.75 / 3, 2 / 3])
    assert summary.learned["grpo"][0].values == (0.5, 0.75, 0.5)


def test_mismatched_seeds_are_refused_with_what_differs() -> None:
    missing = _three_seeds()
    missing[1] = missing[1][:1]
    with pytest.raises(ConfigError, match=r"seed 1 has methods \['grpo'\] but seed 0 has \['grpo', 'lifelong'\]"):
        aggregate_seeds(missing, "grpo")
    other_tasks = _three_seeds()
    other_tasks[2][1] = _result("lifelong", LIFELONG[2], tasks=("a", "c"))
    with pytest.raises(ConfigError, match=r"seed 2, method lifelong ran tasks \['a', 'c'\]") as info:
        aggregate_seeds(other_tasks, "grpo")
    assert "--tasks" in info.value.fix
    with pytest.raises(ConfigError, match="'sft' is not among the methods"):
        aggregate_seeds(_three_seeds(), "sft")
    with pytest.raises(ConfigError, match="no seeds"):
        aggregate_seeds({}, "grpo")


def test_one_seed_has_means_and_no_standard_error(tmp_path: Path) -> None:
    summary = aggregate_seeds({5: [_result("grpo", GRPO[0]), _result("lifelong", LIFELONG[0])]}, "grpo")
    assert summary.stats["grpo"]["ACC"].mean == 0.375 and summary.stats["grpo"]["ACC"].se is None
    assert summary.paired["lifelong"]["ACC"].mean == 0.25 and summary.paired["lifelong"]["ACC"].se is None
    assert estimate([0.5]).se is None and estimate([0.5, 0.5]).se == 0.0
    page = write_seed_report(summary, "s", tmp_path).read_text()
    assert "One seed: no standard error" in page and "±" not in page.split("<h2>Learning")[0]
    assert json.loads((tmp_path / "results.json").read_text())["se"]["grpo"]["ACC"] is None


def test_report_page_json_and_figure(tmp_path: Path) -> None:
    summary = aggregate_seeds(_three_seeds(), "grpo")
    page = write_seed_report(summary, "a+b", tmp_path / "agg").read_text()
    assert 'src="seeds.png"' in page and "3 seeds" in page
    assert all(f'href="seed-{s}/index.html"' in page for s in (0, 1, 2))
    assert "45.8 ± 8.3" in page  # grpo ACC in points: mean ± SE
    assert "+16.7 ± 4.2" in page  # lifelong - grpo ACC: a change, signed
    assert "<td>3</td><td>1</td><td>2</td><td>+8.3</td>" in page  # better, worse, equal, mean difference
    assert "2 SE" in page and "<th>facts</th>" in page
    width, height = png_size(tmp_path / "agg" / "seeds.png")
    assert width >= 800 and height >= 300
    data = json.loads((tmp_path / "agg" / "results.json").read_text())
    assert data["stream"] == "a+b" and data["seeds"] == [0, 1, 2] and data["baseline"] == "grpo"
    # rounded to 6 decimals: the means of 4-decimal scores, without float noise
    assert data["methods"]["grpo"]["ACC"] == 0.458333 and data["se"]["grpo"]["ACC"] == 0.083333
    assert data["paired"]["lifelong"]["ACC"] == {"mean": 0.166667, "se": 0.041667, "per_seed": [0.25, 0.125, 0.125]}
    assert data["new_task"]["vs_baseline"]["lifelong"] == {"better": 3, "worse": 1, "equal": 2, "mean_diff": 0.083333}
    assert data["per_seed"]["1"]["grpo"]["ACC"] == 0.375
    line = json.loads(seed_summary_line(summary, "a+b"))
    assert line["methods"] == data["methods"] and "per_seed" not in line


def test_parse_seeds_and_choose_baseline() -> None:
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds(" 3, 4 ,") == (3, 4)
    for bad, what in [("0,x", "'x' is not a seed"), ("", "no seeds"), ("1,1", "repeats a seed"), ("0.5", "'0.5'")]:
        with pytest.raises(ConfigError, match=what):
            parse_seeds(bad)
    assert choose_baseline(["frozen", "grpo", "lifelong"], None) == "grpo"
    assert choose_baseline(["frozen", "lifelong"], None) == "frozen"
    assert choose_baseline(["frozen", "lifelong"], "lifelong") == "lifelong"
    with pytest.raises(ConfigError, match="--baseline 'sft' is not among the methods"):
        choose_baseline(["frozen", "lifelong"], "sft")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed", "1", "--seeds", "0,1"], "both --seed and --seeds given"),
        (["--seeds", "0,x"], "'x' is not a seed"),
        (["--seeds", "0,1", "--baseline", "sft"], "--baseline 'sft' is not among the methods"),
        (["--baseline", "grpo"], "--baseline is only used with --seeds"),
    ],
)
def test_eval_seed_flag_errors_before_training(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    args = ["eval", "--tasks", "add,letter", "--methods", "frozen,grpo", "--out", str(out), "--quiet", *flags]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran


def test_eval_over_seeds_end_to_end_and_reuses_finished_runs(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    args = tiny_eval_args(tiny_model_dir, out, "--seeds", "0,1")
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["seeds"] == [0, 1] and line["baseline"] == "grpo" and set(line["methods"]) == {"frozen", "grpo"}

    for s in (0, 1):  # each seed is a full one-seed eval of its own, run with that seed
        assert (out / f"seed-{s}" / "index.html").is_file()
        assert set(json.loads((out / f"seed-{s}" / "results.json").read_text())["methods"]) == {"frozen", "grpo"}
        assert json.loads((out / f"seed-{s}" / "runs" / "grpo" / "config.json").read_text())["seed"] == s
    page = (out / "index.html").read_text()
    assert 'src="seeds.png"' in page and (out / "seeds.png").is_file()
    assert 'href="seed-0/index.html"' in page and 'href="seed-1/index.html"' in page
    data = json.loads((out / "results.json").read_text())
    assert data["seeds"] == [0, 1] and set(data["per_seed"]) == {"0", "1"}
    assert [data["per_seed"][s]["frozen"]["BWT"] for s in ("0", "1")] == [0.0, 0.0]
    assert data["paired"]["frozen"]["BWT"]["per_seed"] == pytest.approx(
        [-data["per_seed"][s]["grpo"]["BWT"] for s in ("0", "1")]
    )

    # A second call reads the finished run folders of every seed instead of training again.
    runs = [out / f"seed-{s}" / "runs" / m for s in (0, 1) for m in ("frozen", "grpo")]
    assert_rerun_only_resumes(runs, lambda: main(args))
