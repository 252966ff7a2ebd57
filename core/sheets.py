"""Contact sheets: a grid of images a person can eyeball faster than any manifest."""

from __future__ import annotations

import cv2
import numpy as np


def contact_sheet(images: list[np.ndarray], cols: int = 8, pad: int = 2) -> np.ndarray:
    """Tile RGB uint8 images into one RGB image, row by row, on a white background.

    Images of other sizes are resized (area interpolation) to the first image's size.
    """
    if not images:
        raise ValueError("no images for a contact sheet")
    h, w = images[0].shape[:2]
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + h, x : x + w] = img
    return sheet

