"""Is a frame a picture or noise? One measure for the Studio's tests, headless and in the browser.

``roughness``: the mean absolute difference between neighbouring pixels of the picture in grey,
box-averaged to 64 x 64 (one value per latent pixel at 512 px), in grey levels 0-255. Measured on the
teaching model: its 432 pictures <= 1.9; the x0 of any step (4 seeds x 3 samplers x stops at steps 1 to
140 of 150, through the approx or the full decoder, JPEG-encoded as the Studio sends it) <= 6.1; the
pipeline's decode of the latents of a run stopped in its first third (what the Studio used to show after
Stop) >= 44. ``ROUGH`` = 15 sits between, with room on both sides.
"""
from __future__ import annotations

import io

import numpy as np

ROUGH = 15.0


def roughness(image: bytes) -> float:
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(image)).convert("L").resize((64, 64), Image.BOX)).astype(float)
    return (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()) / 2
