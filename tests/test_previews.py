"""Preview decoders: the linear map, channels, JPEG frames, throttling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlab import previews


def test_approx_uses_the_a1111_coefficients():
    lat = torch.zeros(4, 2, 2)
    lat[0] = 1.0  # channel 1 only: RGB = first row of the table, mapped from [-1, 1] to [0, 255]
    rgb = previews.approx_rgb(lat, "sd1")
    expected = np.round((np.array(previews.APPROX_SD1[0]) + 1) * 127.5)
    assert rgb.shape == (2, 2, 3) and (rgb[0, 0] == expected).all()
    assert (previews.approx_rgb(lat, "sdxl")[0, 0] == np.round((np.array(previews.APPROX_SDXL[0]) + 1) * 127.5)).all()


def test_latent_channels_are_stretched_greys():
    lat = torch.randn(1, 4, 16, 16) * torch.tensor([1.0, 10.0, 0.1, 5.0])[None, :, None, None]
    ch = previews.latent_channels(lat)
    assert ch.shape == (4, 16, 16) and ch.dtype == np.uint8
    assert all(c.max() == 255 and c.min() == 0 for c in ch)


def test_jpeg_frame_of_512px_is_small():
    rgb = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)  # pure noise: the worst case
    data = previews.to_jpeg(rgb)
    assert data[:2] == b"\xff\xd8" and len(data) <= 64 * 1024
    big = previews.to_jpeg(np.zeros((1024, 768, 3), np.uint8))
    from PIL import Image
    import io
    assert max(Image.open(io.BytesIO(big)).size) == 512


def test_previewer_throttles_by_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(previews.time, "perf_counter", lambda: clock[0])
    p = previews.Previewer(decoder="vae", vae=None, min_interval=1.0)
    p.__dict__["_decode"] = None
    monkeypatch.setattr(previews, "vae_rgb", lambda vae, lat: np.zeros((8, 8, 3), np.uint8))
    lat = torch.zeros(4, 1, 1)
    assert p(lat) is not None          # first one decodes
    clock[0] += 0.5
    assert p(lat) is None              # too soon
    assert p(lat, last_step=True) is not None  # the last step always shows
    clock[0] += 1.5
    assert p(lat) is not None
    assert (p.decoded, p.skipped) == (3, 1)


def test_bad_decoder_or_target():
    with pytest.raises(ValueError, match="approx, taesd, vae"):
        previews.Previewer(decoder="fast")
    with pytest.raises(ValueError, match="'x0'"):
        previews.Previewer(target="x1")
