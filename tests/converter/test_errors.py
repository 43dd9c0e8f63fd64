"""Bad inputs and failing workers: a one-line message, exit 2, and no bundle left behind.

These fail before TensorFlow starts (or inject a failure at the worker's process boundary), so
each takes well under a second.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from converter.errors import ConversionError
from converter.pipeline import ConversionRequest, convert
from converter.worker import FAULT_ENV
from protocol.manifest import QuantizationMode, TaskKind
from tests.support.converter import convert_argv, run_cli


@pytest.fixture
def case(tmp_path: Path, digits_model: Path, signing_keys: tuple[Path, Path]) -> dict[str, Path]:
    """A private copy of the digits inputs that a test may break."""
    folder = tmp_path / "inputs"
    shutil.copytree(digits_model, folder)
    return {"dir": folder, "key": signing_keys[0], "out": tmp_path / "digits.bundle"}


def _missing_model(c: dict[str, Path]) -> str:
    (c["dir"] / "model.keras").unlink()
    return "model file"


def _not_a_model(c: dict[str, Path]) -> str:
    (c["dir"] / "model.keras").write_text("these are not the weights you are looking for\n")
    return "is not a Keras model archive"


def _calibration_shape(c: dict[str, Path]) -> str:
    np.savez(c["dir"] / "calibration.npz", x=np.zeros((200, 64), dtype=np.float32))
    return "calibration x has shape (200, 64) but the model takes (N, 8, 8, 1)"


def _nan_calibration(c: dict[str, Path]) -> str:
    x = np.random.default_rng(0).random((200, 8, 8, 1)).astype(np.float32)
    x[7, 3, 3, 0] = np.nan
    np.savez(c["dir"] / "calibration.npz", x=x)
    return "calibration x holds 1 non-finite values (NaN or inf), first in sample 7"


def _bad_key(c: dict[str, Path]) -> str:
    c["key"] = c["dir"] / "labels.txt"
    return "is not an unencrypted PEM private key"


def _evaluation_without_y(c: dict[str, Path]) -> str:
    np.savez(c["dir"] / "evaluation.npz", x=np.zeros((10, 8, 8, 1), dtype=np.float32))
    return "has no 'y'"


def _bad_version(c: dict[str, Path]) -> str:
    return "version"


BREAKERS: dict[str, Callable[[dict[str, Path]], str]] = {
    "missing model": _missing_model,
    "not a model": _not_a_model,
    "calibration shape": _calibration_shape,
    "nan calibration": _nan_calibration,
    "not a key": _bad_key,
    "evaluation without y": _evaluation_without_y,
    "bad version": _bad_version,
}


@pytest.mark.parametrize("breaker", BREAKERS.values(), ids=BREAKERS.keys())
def test_bad_input_is_one_line_and_leaves_nothing(
    breaker: Callable[[dict[str, Path]], str], case: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = breaker(case)
    argv = convert_argv(case["dir"], case["key"], case["out"], "int8")
    if breaker is _bad_version:
        argv[argv.index("--version") + 1] = "1.0"
    run = run_cli(capsys, argv)
    assert run.code == 2
    # Progress lines come first on stderr; the error is the single last line.
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("edgefleet convert: error: "), run.stderr
    assert run.stderr.count("error:") == 1
    assert expected in last
    assert not case["out"].exists()
    assert not list(case["out"].parent.glob(".*tmp*"))


def test_unsupported_model_kind_names_the_supported_ones(
    case: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = case["dir"] / "model.pt"
    checkpoint.write_bytes(b"\x80\x02")
    argv = convert_argv(case["dir"], case["key"], case["out"], "int8")
    argv[1] = str(checkpoint)
    run = run_cli(capsys, argv)
    assert run.code == 2 and "a .pt file" in run.stderr
    for kind in (".keras", ".onnx", ".joblib", "torch.onnx.export"):
        assert kind in run.stderr, kind


def test_existing_out_is_kept_without_force(
    case: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    case["out"].write_bytes(b"an older bundle")
    run = run_cli(capsys, convert_argv(case["dir"], case["key"], case["out"], "int8"))
    assert run.code == 2 and "already exists; pass --force" in run.stderr
    assert case["out"].read_bytes() == b"an older bundle"


def _request(c: dict[str, Path], timeout: float = 60.0) -> ConversionRequest:
    return ConversionRequest(
        model=c["dir"] / "model.keras",
        calibration=c["dir"] / "calibration.npz",
        evaluation=c["dir"] / "evaluation.npz",
        mode=QuantizationMode.INT8,
        name="digits",
        version="1.0.0",
        task=TaskKind.CLASSIFICATION,
        key=c["key"],
        out=c["out"],
        timeout=timeout,
    )


# The worker honours FAULT_ENV at its process boundary (before it imports TensorFlow), so these
# exercise exactly what the parent sees when TensorFlow aborts, hangs or dies with a traceback,
# without waiting for a real TensorFlow failure.
@pytest.mark.parametrize(
    ("fault", "timeout", "expected"),
    [
        ("abort", 60.0, "the conversion worker crashed (SIGABRT) in mode int8"),
        ("hang", 1.0, "conversion in mode int8 did not finish within 1 s and was stopped"),
        ("raise", 60.0, "failed with exit status 1 and no result in mode int8"),
    ],
)
def test_failing_worker_becomes_a_conversion_error(
    fault: str, timeout: float, expected: str, case: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, fault)
    with pytest.raises(ConversionError, match=r"likely cause|longer --timeout") as caught:
        convert(_request(case, timeout=timeout))
    assert expected in str(caught.value)
    assert not case["out"].exists()


def test_crash_through_the_cli_is_one_line(
    case: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, "abort")
    run = run_cli(capsys, convert_argv(case["dir"], case["key"], case["out"], "int8"))
    assert run.code == 2
    assert "crashed (SIGABRT)" in run.stderr and "likely cause" in run.stderr
    assert not case["out"].exists()
