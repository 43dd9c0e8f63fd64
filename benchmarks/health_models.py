"""The two real bundles ``benchmarks.health`` runs on, and the data streams drawn around them.

* digits: the worked example (``converter.examples digits``: a CNN on scikit-learn's 8x8 digits,
  scaled to [0, 1]), converted to int8 with the real CLI; 64 features.
* cancer: a small MLP on scikit-learn's breast-cancer data (30 raw features, standardized by the
  manifest's recorded preprocessing), trained here in a subprocess and converted to int8 with the
  real CLI; a tabular classifier.

The bundle's baseline comes from the converter's evaluation split. The devices' clean streams are
drawn from the *training* split (the same distribution, not the baseline's own samples); the
accuracy a shift costs is measured on the evaluation split, through the real model.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.serving import ActiveModel
from agent.store import ModelStore
from converter.examples import PREPROCESSING_FILE
from edgefleet.stack import convert_digits, run_edgefleet
from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]

_TRAIN_CANCER = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
keras.utils.set_random_seed(0)
x, y = load_breast_cancer(return_X_y=True)
xt, xe, yt, ye = train_test_split(x.astype(np.float32), y, test_size=0.4, random_state=0, stratify=y)
mean, scale = xt.mean(0), np.float32(1.0) / xt.std(0)
model = keras.Sequential([keras.Input((30,), name="features"), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(2, activation="softmax", name="probabilities")], name="cancer")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
model.fit((xt - mean) * scale, yt, epochs=60, batch_size=16, verbose=0)
out = sys.argv[1]
model.save(os.path.join(out, "model.keras"))
np.savez(os.path.join(out, "calibration.npz"), x=xt)
np.savez(os.path.join(out, "evaluation.npz"), x=xe, y=ye)
open(os.path.join(out, "labels.txt"), "w").write("malignant\\nbenign\\n")
pre = {"method": "standardize", "offset": [float(v) for v in mean], "scale": [float(v) for v in scale]}
open(os.path.join(out, "PRE"), "w").write(json.dumps(pre))
"""


@dataclass(frozen=True)
class Subject:
    """A real bundle loaded as the agent loads it, and the data around it."""

    name: str
    model: ActiveModel
    train_x: Floats
    train_y: Ints
    eval_x: Floats
    eval_y: Ints

    def classes(self, x: Floats) -> Ints:
        """The real model's top class of every row (batches of 64 through the serving path)."""
        parts = [self.model.predict(x[i : i + 64]).classes for i in range(0, len(x), 64)]
        return np.concatenate([p for p in parts if p is not None]).astype(np.int64)

    def accuracy(self, x: Floats, weights: npt.NDArray[np.float64] | None = None) -> float:
        hits = (self.classes(x) == self.eval_y).astype(np.float64)
        return float(np.average(hits, weights=weights) * 100)


def _split(name: str) -> tuple[Floats, Floats, Ints, Ints]:
    """The training and evaluation splits exactly as the training code made them."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    if name == "digits":
        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
        y = digits.target.astype(np.int64)
        xt, xe, yt, ye = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    else:
        raw, target = load_breast_cancer(return_X_y=True)
        xt, xe, yt, ye = train_test_split(
            raw.astype(np.float32), target.astype(np.int64), test_size=0.4, random_state=0, stratify=target
        )
    return xt, xe, yt, ye


def _load(bundle_path: Path, trusted: Path, state: Path) -> ActiveModel:
    data = bundle_path.read_bytes()
    bundle = read_bundle(io.BytesIO(data))
    bundle.verify(TrustedKeys.from_paths([trusted]))
    store = ModelStore(state).open()
    sha = hashlib.sha256(data).hexdigest()
    if not store.has(sha):
        store.stage(sha, bundle.manifest_bytes, bundle.signature.model_dump_json().encode(), bundle.members)
    return ActiveModel.load(store.read(sha))


def build_subjects(work: Path) -> list[Subject]:
    """Train (TensorFlow in subprocesses), convert with the real CLI, load as the agent does; a
    ``work`` folder that holds the bundles already (``--work``) is reused."""
    key, trusted = work / "keys" / "operator.key", work / "keys" / "operator.pub"
    digits_dir, cancer_dir = work / "digits", work / "cancer"
    if not (work / "cancer.bundle").is_file():
        _convert(work, key, digits_dir, cancer_dir)
    subjects = []
    for name in ("digits", "cancer"):
        state = work / f"state-{name}"
        model = _load(work / f"{name}.bundle", trusted, state)
        xt, xe, yt, ye = _split(name)
        subjects.append(Subject(name, model, xt, yt, xe, ye))
    return subjects


def _convert(work: Path, key: Path, digits_dir: Path, cancer_dir: Path) -> None:
    if not key.is_file():
        run_edgefleet(["keys", "generate", "--out", str(work / "keys")])
    if not (digits_dir / "model.keras").is_file():
        subprocess.run(
            [sys.executable, "-m", "converter.examples", "digits", str(digits_dir)],
            check=True,
            capture_output=True,
        )
    convert_digits(digits_dir, "1.0.0", key, work / "digits.bundle")
    cancer_dir.mkdir(parents=True, exist_ok=True)
    if not (cancer_dir / "model.keras").is_file():
        subprocess.run(
            [sys.executable, "-c", _TRAIN_CANCER, str(cancer_dir)], check=True, capture_output=True
        )
    (cancer_dir / PREPROCESSING_FILE).write_text((cancer_dir / "PRE").read_text())
    run_edgefleet(
        ["convert", str(cancer_dir / "model.keras"),
         "--calibration", str(cancer_dir / "calibration.npz"),
         "--evaluation", str(cancer_dir / "evaluation.npz"),
         "--labels", str(cancer_dir / "labels.txt"),
         "--preprocessing-file", str(cancer_dir / PREPROCESSING_FILE),
         "--mode", "int8", "--task", "classification", "--name", "cancer", "--version", "1.0.0",
         "--key", str(key), "--out", str(work / "cancer.bundle")]
    )  # fmt: skip


def describe(subject: Subject) -> str:
    baseline = subject.model.manifest.baseline
    stats = baseline.input_features if baseline is not None else None
    features = len(stats.mean) if stats is not None else 0
    samples = baseline.samples if baseline is not None else 0
    return json.dumps({"model": subject.name, "baseline_samples": samples, "summary_features": features})
