"""``examples/capture_retrain.py`` runs as a user runs it, and its retrained model does better
on the shifted inputs it never served while capturing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.slow


def test_the_capture_and_retrain_example_closes_the_loop(
    tmp_path: Path, digits_model: Path, signing_keys: tuple[Path, Path]
) -> None:
    key, _ = signing_keys
    script = ROOT / "examples" / "capture_retrain.py"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "out"),
            "--model-dir",
            str(digits_model),
            "--key",
            str(key),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    figures = result["figures"]
    assert result["example"] == "capture_retrain"
    assert figures["captured"] >= 100  # the shift makes most predictions unsure: they are kept
    before, after = figures["accuracy_before"], figures["accuracy_after"]
    assert before["shifted"] < before["clean"] - 0.1, figures  # the shift costs accuracy
    assert after["shifted"] > before["shifted"] + 0.1, figures  # retraining on captured data wins it back
    assert after["clean"] > 0.9, figures
    assert "rollout" in run.stdout and (tmp_path / "out" / "captured.npz").is_file()
