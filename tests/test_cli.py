from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.cli import main


def _tiny_args(model_dir: Path, runs: Path, *extra: str, task: str = "add") -> list[str]:
    return [
        "run", "--model", str(model_dir), "--tasks", task, "--probe-size", "4",
        "--runs-dir", str(runs), "--run-id", "r", "--quiet", "--threads", "1", *extra,
    ]  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and " -- " in err[0]
    assert "Traceback" not in err[0]
    return err[0]


def test_json_summary_is_the_last_stdout_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_tiny_args(tiny_model_dir, tmp_path, "--episodes", "16", "--json")) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"model", "tasks", "episodes", "before", "after", "minutes"}
    assert last["tasks"] == ["add"] and last["episodes"] == 32  # 16 rounded up to one step of 4 x 8
    assert set(last["before"]) == {"add"}
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "learning_curve.png").is_file()


def test_missing_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--model", str(tmp_path / "nope"), "--runs-dir", str(tmp_path)]) == 2
    assert "does not exist" in _one_error_line(capsys)


def test_corrupt_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    bad = tmp_path / "bad-model"
    bad.mkdir()
    for f in tiny_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    assert main(["run", "--model", str(bad), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "could not load model weights" in _one_error_line(capsys)


def test_unknown_task_suggests_close_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--tasks", "ad", "--runs-dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert "unknown environment 'ad'" in line and "add" in line


def test_corrupt_checkpoint_on_resume(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_tiny_args(tiny_model_dir, tmp_path, "--episodes", "64", "--max-steps", "1")) == 0
    newest = sorted((tmp_path / "r" / "checkpoints").glob("step-*"))[-1]
    (newest / "adapter_model.safetensors").write_bytes(b"broken")
    capsys.readouterr()
    assert main(_tiny_args(tiny_model_dir, tmp_path, "--resume")) == 2
    assert "corrupt" in _one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "run", "--model", str(tmp_path / "nope"), "--runs-dir", str(tmp_path)])


def _train_steps(db: Path) -> dict[int, int]:
    """Training episodes per step, read while another process writes (WAL allows it)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        rows = con.execute("SELECT step, COUNT(*) FROM episodes WHERE split='train' GROUP BY step").fetchall()
        con.close()
    except sqlite3.OperationalError:  # table not created yet
        return {}
    return dict(rows)


def test_kill_9_then_resume_loses_nothing_and_continues(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = _tiny_args(tiny_model_dir, tmp_path, "--episodes", "4000", task="tests.support_envs:coin")
    cmd = [sys.executable, "-m", "lifelong.cli", *args]
    repo = Path(__file__).parent.parent  # so the subprocess can import tests.support_envs
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=repo)
    db = tmp_path / "r" / "experience.sqlite"
    deadline = time.time() + 120
    while len(_train_steps(db)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_train_steps(db)) >= 3, proc.stderr.read().decode() if proc.stderr else ""
    con = sqlite3.connect(db)
    ids_before = {r[0] for r in con.execute("SELECT id FROM episodes")}
    con.close()
    checkpoints = sorted((tmp_path / "r" / "checkpoints").glob("step-*"))
    last_step = int(checkpoints[-1].name.split("-")[1])
    version = json.loads((checkpoints[-1] / "state.json").read_text())["version"]

    resumed = subprocess.run(
        [*cmd, "--resume", "--max-steps", "2"], capture_output=True, text=True, timeout=300, cwd=repo
    )
    assert resumed.returncode == 0, resumed.stderr

    con = sqlite3.connect(db)
    ids_after = {r[0] for r in con.execute("SELECT id FROM episodes")}
    con.close()
    assert ids_before <= ids_after, "stored episodes were lost"
    # every training step holds exactly one batch: episodes stored before the kill were learned
    # from after the resume, not sampled again
    assert set(_train_steps(db).values()) == {32}
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["type"] == "update"]
    resumed_updates = updates[-2:]
    assert [u["step"] for u in resumed_updates] == [last_step + 1, last_step + 2]
    assert version >= last_step - 1 > 0  # the coin task has reward spread: updates were applied
    assert resumed_updates[0]["adapter_version"] == version + 1  # learning went on from the checkpoint


def test_a_memory_unit_run_checkpoints_its_slots_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = _tiny_args(tiny_model_dir, tmp_path, "--unit", "memory", task="tests.support_envs:coin")
    assert main([*args, "--episodes", "96", "--max-steps", "1"]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["unit"] == "memory"
    first = sorted((tmp_path / "r" / "checkpoints").glob("step-*"))[-1]
    from safetensors.torch import load_file

    state = load_file(first / "adapter_model.safetensors")
    assert {"memory.0.keys", "memory.0.background", "memory.0.rows", "memory.0.values"} <= set(state)
    assert 0 < state["memory.0.rows"].numel() <= 4096  # one sparse step wrote at most train_slots
    assert main([*args, "--resume", "--max-steps", "1"]) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "update"][-1] == 2


def test_ray_and_vllm_refuse_a_unit_other_than_lora(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--ray"], ["--sampler", "vllm"]):
        assert main(["run", "--unit", "memory", "--runs-dir", str(tmp_path), *extra]) == 2
        line = _one_error_line(capsys)
        assert "--unit memory is not supported" in line and "--unit lora" in line


def test_the_precision_flags_default_to_the_configs_and_serve_leaves_them_to_its_config() -> None:
    from dataclasses import fields

    from lifelong.cli import PRECISION_CHOICES, build_parser
    from lifelong.loop.config import RunConfig
    from lifelong.model.policy import PRECISIONS
    from lifelong.serve import ServeConfig

    parser, defaults = build_parser(), {f.name: f.default for f in fields(RunConfig)}
    for command in (["run"], ["eval"]):
        args = parser.parse_args(command)
        assert (args.sampler_precision, args.learner_precision) == (
            defaults["sampler_precision"],
            defaults["learner_precision"],
        )
    serve = parser.parse_args(["serve"])
    assert serve.sampler_precision is None and serve.learner_precision is None
    serve_defaults = {f.name: f.default for f in fields(ServeConfig)}
    assert serve_defaults["sampler_precision"] == "float32"  # token for token the bare model
    assert list(PRECISIONS) == PRECISION_CHOICES


def test_two_runs_of_one_seed_start_from_the_same_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The adapters' random initialisation follows --seed, whatever the process drew from the
    global generator before: two runs of one seed hold the same weights after their first step."""
    import torch
    from safetensors.torch import load_file

    def first_adapters(runs: Path) -> dict[str, torch.Tensor]:
        assert main(_tiny_args(tiny_model_dir, runs, "--episodes", "64", "--max-steps", "1", "--method", "grpo")) == 0
        first = sorted((runs / "r" / "checkpoints").glob("step-*"))[0]
        return load_file(first / "adapter_model.safetensors")

    a = first_adapters(tmp_path / "a")
    torch.rand(7)  # whatever the process did in between
    b = first_adapters(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
