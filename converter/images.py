"""A folder of images as calibration data, with a declared preprocessing.

Images are read with Pillow, converted to the model's channel count (1: grayscale, 3: RGB),
resized to the model's input height and width (bilinear), and mapped to the model's input range
by the declared preprocessing. The model must declare a fixed ``(N, H, W, C)`` input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from converter.errors import InputError

ImagePreprocessing = Literal["scale01", "minus1to1", "raw"]
PREPROCESSING: dict[str, tuple[float, float]] = {
    "scale01": (1.0 / 255.0, 0.0),
    "minus1to1": (1.0 / 127.5, -1.0),
    "raw": (1.0, 0.0),
}
"""name -> (scale, offset): ``x = pixel * scale + offset`` with pixels in 0..255."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def load_image_folder(
    folder: Path, role: str, input_shape: list[int | None] | None, preprocessing: ImagePreprocessing
) -> npt.NDArray[np.float32]:
    """Every image under ``folder`` (recursively, sorted by path) as one float32 array."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{role} folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if (
        input_shape is None
        or len(input_shape) != 4
        or any(d is None for d in input_shape[1:])
        or input_shape[3] not in (1, 3)
    ):
        raise InputError(
            f"{role} folder {folder}: images need a model that declares a fixed (N, H, W, 1 or 3) input "
            f"(a .keras archive does; this model declares {input_shape or 'none'}); "
            "give the data as .npy or .npz instead"
        )
    height, width, channels = (int(d) for d in input_shape[1:] if d is not None)
    mode = "L" if channels == 1 else "RGB"
    scale, offset = PREPROCESSING[preprocessing]
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                resized = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(resized, dtype=np.float32)
        except (OSError, ValueError, UnidentifiedImageError) as exc:
            raise InputError(f"{path} is not a readable image: {exc}") from exc
        images.append(pixels.reshape(height, width, channels))
    stacked: npt.NDArray[np.float32] = np.stack(images).astype(np.float32)
    return stacked * np.float32(scale) + np.float32(offset)
