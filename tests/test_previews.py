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


def test_a_constant_channel_shows_flat_not_its_rounding_noise():
    # the teaching model's clean x0: channels 2 and 4 hold about 1e-8 of rounding, the others the picture
    lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    lat[0, 1] *= 1e-8
    lat[0, 3] = 0.25 + 1e-8 * lat[0, 3]
    ch = previews.latent_channels(lat)
    assert ch[1].max() - ch[1].min() <= 1 and ch[3].max() - ch[3].min() <= 1  # flat grey
    assert ch[0].min() == 0 and ch[0].max() == 255 and ch[2].min() == 0 and ch[2].max() == 255


def test_jpeg_frame_of_512px_is_small():
    rgb = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)  # pure noise: the worst case
    data = previews.to_jpeg(rgb)
    assert data[:2] == b"\xff\xd8" and len(data) <= 64 * 1024
    big = previews.to_jpeg(np.zeros((1024, 768, 3), np.uint8))
    from PIL import Image
    import io
    assert max(Image.open(io.BytesIO(big)).size) == 512


def test_previewer_throttles_by_a_time_budget(monkeypatch):
    """Decodes take at most `budget` of the run's time; before the first, the cost is estimated from the
    step time (the VAE at 1.6 steps), after it the measured cost counts."""
    clock = [100.0]
    monkeypatch.setattr(previews.time, "perf_counter", lambda: clock[0])

    def decode(vae, lat):  # a decode that takes 0.5 s
        clock[0] += 0.5
        return np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(previews, "vae_rgb", decode)
    p = previews.Previewer(decoder="vae", vae=None, min_interval=1.0, budget=0.1)
    lat = torch.zeros(4, 1, 1)
    shown = []
    for step in range(200):  # steps of 1 s
        shown.append(p(lat) is not None)
        clock[0] += 1.0
    assert not shown[0]                             # no step time known yet
    first = shown.index(True)
    assert first == 15                              # 1.6 s estimated: 1.6 <= 10 % of (15 s + 1.6 s)
    assert p.spent == 0.5 * p.decoded and p.spent <= 0.1 * (clock[0] - 100.0)
    assert p.decoded >= 0.1 * 200 / 0.5 * 0.8       # and it uses most of its budget
    assert all(b - a >= 1 for a, b in zip([i for i, s in enumerate(shown) if s], [i for i, s in enumerate(shown) if s][1:]))
    approx = previews.Previewer(decoder="approx")
    assert all(approx.due() for _ in range(5))      # approx: every step, no budget


def test_bad_decoder_or_target():
    with pytest.raises(ValueError, match="approx, taesd, vae"):
        previews.Previewer(decoder="fast")
    with pytest.raises(ValueError, match="'x0'"):
        previews.Previewer(target="x1")
