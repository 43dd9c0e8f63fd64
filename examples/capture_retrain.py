"""Worked example: capture the inputs a model struggles with, retrain on them, roll out the fix.

    python examples/capture_retrain.py [OUT_DIR] [--model-dir DIR] [--key FILE]

Everything runs on this machine with the real programs: a Mosquitto, ``edgefleet fleet serve``,
one ``edgefleet agent run``, and the converter.

1. Train the digits CNN (``python -m converter.examples digits``; or reuse ``--model-dir``),
   convert it to a signed int8 bundle (1.0.0), push it and deploy it to the device.
2. The device's camera moves: its inputs shift (one pixel to the right, 60 % brightness). The
   model's accuracy on them drops (measured through the agent, capture still off).
3. Switch capture on for the device from the fleet (``edgefleet capture enable``): half of what
   it serves at random, and every prediction under 0.9 confidence. Serve the shifted inputs;
   the agent uploads the samples to the fleet.
4. ``edgefleet capture export digits 1.0.0 --out captured.npz``; label the samples (here: the
   example knows the true digit of each input it sent; in real life this is the labelling step),
   fine-tune the model on the clean training set plus the labelled captured samples.
5. ``edgefleet convert`` the new model with ``--calibration captured.npz`` (the export as it is)
   into 1.1.0, and roll it out (``POST /api/v1/rollouts``) to the device.
6. Measure again on held-out shifted inputs the device never served while capturing.

The last line is JSON with the figures. Training runs in a subprocess (this process never
imports TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.keys import generate_key_pair  # noqa: E402 - after the path is set
from edgefleet.mosquitto import MosquittoBroker  # noqa: E402
from edgefleet.stack import AgentProcess, FleetProcess, convert_digits, run_edgefleet  # noqa: E402
from edgefleet.wait import wait_until  # noqa: E402

SERVED = 300
"""Shifted instances served while capturing; the rest of the evaluation set is held out."""


def shift(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What a moved, dimmer camera does to the 8x8 digits: one pixel right, 60 % brightness."""
    moved = np.roll(x, 1, axis=2)
    moved[:, :, 0, :] = 0
    return (moved * 0.6).astype(np.float32)


def accuracy(agent: AgentProcess, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    response = requests.post(f"{agent.url}/v1/predict", json={"inputs": x.tolist()}, timeout=30)
    response.raise_for_status()
    predicted = np.array([p["class"] for p in response.json()["predictions"]])
    return round(float(np.mean(predicted == y)), 3)


def fleet_call(fleet: FleetProcess, method: str, path: str, **kwargs: Any) -> Any:
    response = requests.request(method, f"{fleet.url}{path}", timeout=30, **kwargs)
    if response.status_code >= 400:
        raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def captured_at_fleet(fleet: FleetProcess) -> int:
    return sum(m["samples"] for m in fleet_call(fleet, "GET", "/api/v1/capture")["models"])


def waiting_on_device(agent: AgentProcess) -> int:
    path = agent.state_dir / "capture.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM samples").fetchone()
    return int(count)


def wait_uploaded(fleet: FleetProcess, agent: AgentProcess) -> int:
    """Until the device's store is empty and the fleet's count holds still."""
    last = -1

    def settled() -> int | None:
        nonlocal last
        now = captured_at_fleet(fleet)
        done = now == last and waiting_on_device(agent) == 0
        last = now
        return now if done and now else None

    return wait_until(settled, "the captured samples at the fleet", 120, 1.5)


def retrain(model_dir: Path, captured: Path, labels: Path, out_dir: Path, seed: int) -> None:
    """Fine-tune the model on its clean training set plus the labelled captured samples (run in
    a subprocess: TensorFlow stays out of the process that talks to the agent)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    # The split converter.examples.train_digits made: the same clean training set.
    x_train, _, y_train, _ = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    with np.load(captured) as data:
        x_new = data["x"]
    y_new = np.load(labels)
    model = keras.models.load_model(model_dir / "model.keras")
    model.compile(optimizer=keras.optimizers.Adam(5e-4), loss="sparse_categorical_crossentropy")
    x_all = np.concatenate([x_train, x_new, x_new])  # the new inputs count twice: they are rare
    y_all = np.concatenate([y_train, y_new, y_new])
    model.fit(x_all, y_all, epochs=15, batch_size=32, verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - the example reads top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("capture-example"))
    parser.add_argument("--model-dir", type=Path, help="a trained `converter.examples digits` folder")
    parser.add_argument("--key", type=Path, help="operator private key (default: a new pair in OUT_DIR)")
    args = parser.parse_args(argv)
    out: Path = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or out / "digits-v1"
    if args.model_dir is None:
        print("training the digits CNN ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "converter.examples", "digits", str(model_dir)], check=True, cwd=ROOT
        )
    if args.key is not None:
        key, public = args.key, args.key.with_suffix(".pub")
    else:
        pair = generate_key_pair(out / "keys")
        key, public = pair.private_path, pair.public_path
    v1 = out / "digits-1.0.0.bundle"
    convert_digits(model_dir, "1.0.0", key, v1)
    with np.load(model_dir / "evaluation.npz") as data:
        x_eval, y_eval = data["x"].astype(np.float32), data["y"]
    shifted = shift(x_eval)
    serve_x, serve_y = shifted[:SERVED], y_eval[:SERVED]
    held_x, held_y = shifted[SERVED:], y_eval[SERVED:]

    with MosquittoBroker(out / "mosquitto") as broker:
        fleet = FleetProcess(out / "fleet", broker.port, public)
        capture = {"upload_interval_s": 0.5}  # capture itself stays off in agent.toml
        agent = AgentProcess(
            "cam-1", out / "devices", fleet.url, broker.port, public,
            poll_interval_s=1, settings={"capture": capture},
        )  # fmt: skip
        try:
            fleet.start_and_wait()
            agent.start_and_wait()
            headers = {"Content-Type": "application/octet-stream"}
            fleet_call(fleet, "POST", "/api/v1/models", data=v1.read_bytes(), headers=headers)
            deployment = {"name": "digits", "version": "1.0.0", "device_id": None}
            fleet_call(fleet, "POST", "/api/v1/deployments", json=deployment)
            agent.wait_for_version("1.0.0")
            before = {
                "clean": accuracy(agent, x_eval[SERVED:], held_y),
                "shifted": accuracy(agent, held_x, held_y),
            }
            print(f"1.0.0 on held-out inputs: clean {before['clean']:.3f}, shifted {before['shifted']:.3f}")

            fleet_flags = ["--fleet", fleet.url]
            run_edgefleet(
                [
                    "capture",
                    "enable",
                    "--device",
                    "cam-1",
                    "--rate",
                    "0.5",
                    "--low-confidence-below",
                    "0.9",
                    *fleet_flags,
                ]
            )
            agent.wait_for_log("capture: the fleet's policy now applies")
            for start in range(0, SERVED, 10):  # a camera's stream: a few frames per request
                accuracy(agent, serve_x[start : start + 10], serve_y[start : start + 10])
            count = wait_uploaded(fleet, agent)
            run_edgefleet(["capture", "disable", "--device", "cam-1", *fleet_flags])
            print(f"captured {count} of {SERVED} shifted instances")

            captured = out / "captured.npz"
            print(
                run_edgefleet(
                    ["capture", "export", "digits", "1.0.0", "--out", str(captured), *fleet_flags]
                ).strip()
            )
            with np.load(captured) as data:
                x_new = data["x"]
            # Labelling: each captured input is one the example sent, whose digit it knows.
            truth = {x.tobytes(): int(y) for x, y in zip(serve_x, serve_y, strict=True)}
            labels = out / "captured-labels.npy"
            np.save(labels, np.array([truth[x.tobytes()] for x in x_new]))
            v2_dir = out / "digits-v2"
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_retrain",
                    str(model_dir),
                    str(captured),
                    str(labels),
                    str(v2_dir),
                ],
                check=True,
                cwd=ROOT,
            )
            (v2_dir / "labels.txt").write_text((model_dir / "labels.txt").read_text())
            evaluation = out / "evaluation-v2.npz"
            np.savez(
                evaluation, x=np.concatenate([x_eval[SERVED:], held_x]), y=np.concatenate([held_y, held_y])
            )
            v2 = out / "digits-1.1.0.bundle"
            run_edgefleet(
                ["convert", str(v2_dir / "model.keras"),
                 "--calibration", str(captured), "--evaluation", str(evaluation),
                 "--labels", str(v2_dir / "labels.txt"), "--mode", "int8", "--task", "classification",
                 "--name", "digits", "--version", "1.1.0", "--key", str(key), "--out", str(v2)],
            )  # fmt: skip
            fleet_call(fleet, "POST", "/api/v1/models", data=v2.read_bytes(), headers=headers)
            rollout = {
                "name": "digits", "version": "1.1.0", "target": {"devices": ["cam-1"]}, "waves": ["100%"],
                "gates": {"soak_s": 0, "min_windows_per_device": 1, "min_requests_per_device": 0,
                          "min_windows_per_wave": 1, "min_requests_per_wave": 0},
            }  # fmt: skip
            started = fleet_call(fleet, "POST", "/api/v1/rollouts", json=rollout)
            agent.wait_for_version("1.1.0", timeout_s=120)
            print(f"rollout {started['id']} put 1.1.0 on cam-1")
            after = {
                "clean": accuracy(agent, x_eval[SERVED:], held_y),
                "shifted": accuracy(agent, held_x, held_y),
            }
            print(f"1.1.0 on held-out inputs: clean {after['clean']:.3f}, shifted {after['shifted']:.3f}")
        finally:
            agent.stop()
            fleet.stop()
    figures = {
        "captured": count,
        "accuracy_before": before,
        "accuracy_after": after,
    }
    print(json.dumps({"example": "capture_retrain", "figures": figures}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_retrain":
        model, data, labels, dest = (Path(p) for p in sys.argv[2:6])
        retrain(model, data, labels, dest, seed=0)
        sys.exit(0)
    sys.exit(main())
