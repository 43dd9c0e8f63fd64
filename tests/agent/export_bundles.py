"""Write the agent tests' bundles and keys to a folder, on a machine that can run TensorFlow.

    python -m tests.agent.export_bundles OUT

The emulated aarch64 stage (``scripts/arm-test``) runs the agent's tests with
``EDGEFLEET_TEST_BUNDLES=OUT``: the models were converted and their smoke outputs recorded on
the host, and the device's runtime must reproduce them, as on a real fleet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from protocol.signing import generate_private_key, private_key_pem, public_key_pem
from tests.agent.bundles import convert_to_tflite
from tests.support.agent import make_bundles


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, extra in (("digits-v1", ["--seed", "0"]), ("digits-v2", ["--seed", "1", "--filters", "12"])):
        subprocess.run(
            [sys.executable, "-m", "converter.examples", "digits", str(out / name), *extra],
            check=True,
            capture_output=True,
        )
    convert_to_tflite(
        [(out / "digits-v1", "int8", out / "v1.tflite"), (out / "digits-v2", "int8", out / "v2.tflite")]
    )
    key = generate_private_key()
    (out / "operator.key").write_bytes(private_key_pem(key))
    (out / "operator.pub").write_bytes(public_key_pem(key.public_key()))
    made = make_bundles(
        (out / "v1.tflite").read_bytes(),
        (out / "v2.tflite").read_bytes(),
        out / "digits-v1",
        out / "operator.key",
    )
    for name in ("v1", "v2", "untrusted", "smoke_bad"):
        (out / f"{name}.bundle").write_bytes(getattr(made, name))
    np.save(out / "samples_x.npy", made.samples_x)
    print(f"wrote the agent tests' bundles and keys to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
