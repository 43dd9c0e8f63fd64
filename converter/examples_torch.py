"""Worked example: a small PyTorch forecaster of next year's sunspot number (statsmodels' yearly
series), converted from a factory.

``python -m converter.examples_torch OUT_DIR`` writes ``calibration.npz`` (every input window of
the history, raw sunspot numbers) and ``evaluation.npz`` (the last 20 % of the years, with the
next year's number); numpy only. ``converter.examples_torch:forecaster`` is the factory the
converter takes: it trains the module (a second or two, deterministic) and returns it with an
example input, ``(nn.Module, torch.Tensor of shape (1, 12))``. Needs the converter-torch extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 12
SCALE = 100.0
"""Sunspot numbers go up to about 190: the module divides by this first and multiplies after."""


def windows() -> tuple[Any, Any, Any, Any]:
    from converter.examples import sunspot_windows

    x, y = sunspot_windows(WINDOW)
    x = x[..., 0]
    split = int(len(x) * 0.8)
    return x[:split], y[:split], x[split:], y[split:]


def forecaster() -> tuple[Any, Any]:
    """The trained module and an example input (the factory ``edgefleet convert`` calls)."""
    import torch

    torch.manual_seed(0)
    x_train, y_train, _, _ = windows()

    module: Any = torch.nn.Sequential(
        torch.nn.Linear(WINDOW, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
    )  # fmt: skip
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(600):  # on inputs and targets / SCALE: the layers see values near 1
        optimizer.zero_grad()
        loss: Any = torch.nn.functional.l1_loss(module(inputs / SCALE), targets / SCALE)
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # then the scaling folded into the first and last layers: raw in, raw out
        module[0].weight /= SCALE
        module[4].weight *= SCALE
        module[4].bias *= SCALE
    return module.eval(), inputs[:1]


def write_data(out_dir: Path) -> None:
    x_train, _, x_eval, y_eval = windows()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "calibration.npz", x=np.concatenate([x_train, x_eval]))
    np.savez(out_dir / "evaluation.npz", x=x_eval, y=y_eval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.examples_torch", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    write_data(args.out_dir)
    print(f"wrote the sunspot windows into {args.out_dir}; the model: converter.examples_torch:forecaster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
