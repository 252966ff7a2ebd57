"""Atomic writes (a reader, or a rerun after a crash, never sees a half-written file) and the
one JSON-lines reader."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: object) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save without pickles (a numeric array only), atomically."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(Path(path), buf.getvalue())


def write_figure_atomic(path: Path, figure) -> None:
    """A matplotlib figure as PNG at the figure's own dpi, atomically."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    write_bytes_atomic(Path(path), buf.getvalue())


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    """Save an RGB uint8 array as PNG (OpenCV wants BGR)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path.name} as PNG")
    write_bytes_atomic(path, buf.tobytes())


def read_jsonl(path: Path) -> Iterator[dict]:
    """The records of a JSON-lines file, one per non-blank line; a line that is not JSON is a
    UserError naming the file and line (a manifest or metrics file damaged by hand)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {number} is not JSON ({err.msg})") from None
