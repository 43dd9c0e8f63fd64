"""Converter fixtures: each needed conversion runs once per module, through the real CLI.

Conversion happens in subprocesses (``converter.worker`` imports TensorFlow there), so this pytest
process never imports TensorFlow and may run tflite-runtime itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.converter.installs import install_on_agent
from tests.support.converter import CliRun, Converted, cli_capture, convert_argv, train_example


def _convert_once(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mode: str, *extra: str
) -> tuple[CliRun, Path, Path]:
    digits: Path = request.getfixturevalue("digits_model")
    private, _ = request.getfixturevalue("signing_keys")
    folder = tmp_path_factory.mktemp(f"convert-{mode}")
    out, report = folder / "digits.bundle", folder / "report.json"
    # Module-scoped fixtures cannot use capsys: cli_capture redirects instead.
    run = cli_capture([*convert_argv(digits, private, out, mode, *extra), "--report-json", str(report)])
    return run, out, report


@pytest.fixture(scope="module")
def int8_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    run, out, report = _convert_once(request, tmp_path_factory, "int8")
    assert run.code == 0, run.stderr
    return Converted(run, out, json.loads(report.read_text()))


@pytest.fixture(scope="module")
def dynamic_refused(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    run, out, _ = _convert_once(request, tmp_path_factory, "dynamic")
    return Converted(run, out, {})


@pytest.fixture(scope="module")
def dynamic_litert(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    run, out, report = _convert_once(request, tmp_path_factory, "dynamic", "--runtime", "litert")
    assert run.code == 0, run.stderr
    return Converted(run, out, json.loads(report.read_text()))


_TRAIN_REGRESSION = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, numpy as np
from sklearn.datasets import load_diabetes
keras.utils.set_random_seed(0)
x, y = load_diabetes(return_X_y=True)
x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
y = ((y - y.mean()) / y.std()).astype(np.float32)
layers = [keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
model = keras.Sequential(layers)
model.compile(optimizer="adam", loss="mse")
model.fit(x[:350], y[:350], epochs=20, verbose=0)
out = sys.argv[1]
model.save(os.path.join(out, "model.keras"))
np.savez(os.path.join(out, "calibration.npz"), x=x[:350])
np.savez(os.path.join(out, "evaluation.npz"), x=x[350:], y=y[350:])
"""


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras regressor on scikit-learn's diabetes data, trained in a subprocess."""
    folder = tmp_path_factory.mktemp("diabetes")
    subprocess.run([sys.executable, "-c", _TRAIN_REGRESSION, str(folder)], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="session")
def example_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """diabetes and sunspots trained as the examples train them (digits is the session's digits_model)."""
    return {
        name: train_example(name, tmp_path_factory.mktemp(f"example-{name}"))
        for name in ("diabetes", "sunspots")
    }


@pytest.fixture(scope="session")
def auto_converted(
    example_models: dict[str, Path],
    digits_model: Path,
    signing_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Converted]:
    """Each worked example converted with ``--mode auto`` (every mode converted and measured)."""
    from converter.examples import convert_argv as example_argv

    folders = {"digits": digits_model, **example_models}
    converted = {}
    for name, folder in folders.items():
        out_dir = tmp_path_factory.mktemp(f"auto-{name}")
        out, report = out_dir / f"{name}.bundle", out_dir / "report.json"
        argv = example_argv(name, folder, signing_keys[0], out, "auto", "--report-json", str(report))
        run = cli_capture(argv)
        assert run.code == 0, run.stderr
        converted[name] = Converted(run, out, json.loads(report.read_text()))
    return converted


@pytest.fixture(scope="session")
def _bundles_before(tmp_path_factory: pytest.TempPathFactory) -> set[Path]:
    """Bundles other parts of the suite wrote before the converter's tests began (not ours)."""
    return set(tmp_path_factory.getbasetemp().rglob("*.bundle"))


_INSTALLED: set[Path] = set()


@pytest.fixture(autouse=True)
def every_bundle_installs_on_an_agent(
    _bundles_before: set[Path],
    signing_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """After each test, every bundle ``convert`` or ``bundle`` wrote so far (in the test or its
    fixtures, the worked examples included) is installed as an agent installs it: verified,
    staged, and smoke-tested in every runtime its manifest says loads it. A bundle the converter
    writes and an agent refuses fails the test that wrote it."""
    yield
    base = tmp_path_factory.getbasetemp()
    for bundle in sorted(set(base.rglob("*.bundle")) - _bundles_before - _INSTALLED):
        if not tarfile.is_tarfile(bundle):  # a test's placeholder ("an older bundle"), not a bundle
            continue
        _INSTALLED.add(bundle)
        install_on_agent(bundle, signing_keys[1], tmp_path_factory.mktemp("agent-state"))
