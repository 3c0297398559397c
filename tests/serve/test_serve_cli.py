"""`lifelong serve` rejects bad input with one error line and exit code 2 (it serves in test_durability)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifelong.cli import main


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1 and err[0].startswith("error: ") and " -- " in err[0], err
    return err[0]


def test_a_broken_keys_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keys.json").write_text('{"keys": [{"tenant": "alice"}]}')
    assert main(["serve", "--keys", str(tmp_path / "keys.json"), "--store", str(tmp_path / "s")]) == 2
    assert "keys file" in one_error_line(capsys)


def test_a_key_flag_must_be_tenant_equals_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--key", "sk-no-tenant", "--store", str(tmp_path / "s")]) == 2
    assert "TENANT=KEY" in one_error_line(capsys)
    assert main(["serve", "--key", "../etc=sk-1", "--store", str(tmp_path / "s")]) == 2
    assert "tenant name" in one_error_line(capsys)


def test_a_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["serve", "--model", str(tmp_path / "nope"), "--key", "a=sk-a", "--store", str(tmp_path / "s")]
    assert main(args) == 2
    assert "does not exist" in one_error_line(capsys)


def test_an_unknown_config_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.json").write_text('{"learner": {"speed": 11}}')
    assert main(["serve", "--config", str(tmp_path / "c.json"), "--key", "a=sk-a", "--store", str(tmp_path)]) == 2
    assert "unknown setting" in one_error_line(capsys)
