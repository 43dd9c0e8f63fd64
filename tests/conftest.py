"""Fixtures every part's tests share.

Nothing here imports TensorFlow: TensorFlow and tflite-runtime cannot share a process, and the
agent's tests run tflite-runtime in the pytest process. Models are trained and converted in
subprocesses, once per session.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.keys import generate_key_pair
from edgefleet.mosquitto import MosquittoBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private Mosquitto on a free loopback port; the test may stop and restart it."""
    with MosquittoBroker(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key, public key) PEM files of a fresh operator key pair."""
    pair = generate_key_pair(tmp_path_factory.mktemp("keys"))  # what `edgefleet keys generate` writes
    return pair.private_path, pair.public_path


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with model.keras, calibration.npz, evaluation.npz and labels.txt (seed 0)."""
    return _train("digits", tmp_path_factory.mktemp("digits-v1"), seed=0)


@pytest.fixture(scope="session")
def digits_model_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another digits model (seed 1, more filters): different weights, same signature."""
    return _train("digits", tmp_path_factory.mktemp("digits-v2"), seed=1, filters=12)


def _train(example: str, out_dir: Path, seed: int, filters: int = 8) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "converter.examples",
            example,
            str(out_dir),
            "--seed",
            str(seed),
            "--filters",
            str(filters),
        ],
        check=True,
        capture_output=True,
    )
    return out_dir
