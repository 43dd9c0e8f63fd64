"""``edgefleet keys generate``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from converter.keys import signing_key_id
from protocol.signing import TrustedKeys
from tests.support.converter import run_cli


def test_generate_writes_a_private_key_only_the_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_cli(capsys, ["keys", "generate", "--out", str(tmp_path / "keys"), "--name", "alice"])
    assert run.code == 0
    private, public = tmp_path / "keys" / "alice.key", tmp_path / "keys" / "alice.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    printed_id = run.stdout.strip().splitlines()[-1]
    assert printed_id == signing_key_id(private)
    assert TrustedKeys.from_paths([public]).ids() == [printed_id]


def test_generate_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["keys", "generate", "--out", str(tmp_path)]
    first = run_cli(capsys, argv)
    key_before = (tmp_path / "operator.key").read_bytes()
    again = run_cli(capsys, argv)
    assert again.code == 2 and "already exists; pass --force" in again.stderr
    assert (tmp_path / "operator.key").read_bytes() == key_before
    forced = run_cli(capsys, [*argv, "--force"])
    assert forced.code == 0 and forced.stdout.splitlines()[-1] != first.stdout.splitlines()[-1]
    assert stat.S_IMODE((tmp_path / "operator.key").stat().st_mode) == 0o600


def test_generate_rejects_a_path_as_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_cli(capsys, ["keys", "generate", "--out", str(tmp_path), "--name", "../evil"])
    assert run.code == 2 and "key name" in run.stderr
    assert not list(tmp_path.parent.glob("evil*"))


def test_the_edgefleet_command_dispatches_to_the_converter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgefleet.cli import main

    assert main(["keys", "generate", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "operator.key").exists()
    argv = [
        "convert", str(tmp_path / "nope.keras"), "--calibration", "c.npz", "--evaluation", "e.npz",
        "--mode", "int8", "--name", "x", "--version", "1.0.0", "--task", "regression",
        "--key", str(tmp_path / "operator.key"), "--out", str(tmp_path / "x.bundle"),
    ]  # fmt: skip
    assert main(argv) == 2
    assert "edgefleet convert: error: model file" in capsys.readouterr().err
