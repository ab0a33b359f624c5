"""The conventions module: each formula against an independent computation of the same quantity."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlab import conventions as C


@pytest.mark.parametrize("kind", C.PREDICTION_TYPES)
@pytest.mark.parametrize("sigma", [0.03, 1.0, 14.6])
def test_prediction_and_x0_are_inverse(kind, sigma):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    x = x0 + sigma * eps
    out = C.prediction_from_x0(kind, x0, x, sigma)
    assert torch.allclose(C.x0_from_prediction(kind, out, x, sigma), x0, rtol=0, atol=1e-12)
    # the targets as their papers define them (DDPM's eps; v = alpha eps - sigma_vp x0, Salimans & Ho 2022)
    alpha, sigma_vp = 1 / np.sqrt(1 + sigma ** 2), sigma / np.sqrt(1 + sigma ** 2)
    want = {"epsilon": eps, "v_prediction": alpha * eps - sigma_vp * x0, "sample": x0}[kind]
    assert torch.allclose(out, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_x0_matches_what_a_diffusers_scheduler_computes(kind):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=kind,
                      clip_sample=False, set_alpha_to_one=False)
    s.set_timesteps(10)
    t = int(s.timesteps[3])
    ab = float(s.alphas_cumprod[t])
    sigma = float(np.sqrt((1 - ab) / ab))
    g = torch.Generator().manual_seed(1)
    x_vp, out = torch.randn(2, 1, 4, 8, 8, generator=g, dtype=torch.float64)
    theirs = s.step(out, t, x_vp).pred_original_sample
    ours = C.x0_from_prediction(kind, out, C.vp_to_ve(x_vp, sigma), sigma)
    # diffusers works with float32 alphas_cumprod (and sqrt(1 - ab) in float32): 2^-24-relative inputs
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_ve_and_vp_forms():
    x = torch.ones(3)
    assert torch.allclose(C.vp_to_ve(C.ve_to_vp(x, 2.0), 2.0), x)
    assert C.vp_scale(np.array([0.0]))[0] == 1.0 and C.vp_sigma(0.0) == 0.0
    assert C.sample_as_ve(x, 2.0, True) is x and C.xt_scale(2.0, False) == 1.0
    assert C.xt_scale(2.0, True) == pytest.approx(1 / np.sqrt(5))
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        C.x0_from_prediction("noise", x, x, 1.0)
