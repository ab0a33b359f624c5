"""The algebra between diffusion conventions, each formula written once, with its source.

Two ways to write a noisy sample at noise level sigma (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", section 2 and table 1):

- variance exploding (VE, k-diffusion's and A1111's samplers; diffusers' Euler, Heun, LMS, DPM2, DPM++ SDE):
  x = x0 + sigma eps;
- variance preserving (VP, the UNet's input and DDPM's x_t; diffusers' DDIM, PLMS, DPM-Solver, UniPC, DEIS):
  x_t = alpha x0 + sigma_vp eps with alpha = sqrt(alphabar) = 1 / sqrt(1 + sigma^2) and sigma_vp = sigma alpha.

So x_t = alpha x (``ve_to_vp``). What the UNet outputs depends on its training target:

- "epsilon" (Ho et al. 2020, DDPM): eps;
- "v_prediction" (Salimans & Ho 2022, "Progressive Distillation", section 4): v = alpha eps - sigma_vp x0;
- "sample": x0 itself.

``x0_from_prediction`` and ``prediction_from_x0`` are the two directions, in VP form, as k-diffusion's
``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` (k_diffusion/external.py) and diffusers'
schedulers' ``step`` compute them. Works on numbers, numpy arrays and torch tensors alike.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def vp_scale(sigma):
    """alpha = sqrt(alphabar) = 1 / sqrt(1 + sigma^2): the VP signal scale at VE noise level sigma."""
    return 1.0 / np.sqrt(1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


def vp_coefficients(sigma) -> tuple[float, float]:
    """(alpha, sigma_vp) of x_t = alpha x0 + sigma_vp eps at the VE noise level sigma (a number)."""
    alpha = float(vp_scale(float(sigma)))
    return alpha, float(sigma) * alpha


def ve_to_vp(x, sigma):
    """x0 + sigma eps -> alpha x0 + sigma_vp eps (what the UNet sees; k-diffusion's c_in)."""
    return x * float(vp_scale(float(sigma)))


def vp_to_ve(x, sigma):
    """alpha x0 + sigma_vp eps -> x0 + sigma eps."""
    return x / float(vp_scale(float(sigma)))


def check_prediction_type(kind: str) -> str:
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, not {kind!r}.")
    return kind


def x0_from_prediction(kind: str, output, x_vp, alpha, sigma_vp):
    """The clean-sample estimate from a model output for VP sample x_vp = alpha x0 + sigma_vp eps."""
    if kind == "epsilon":
        return (x_vp - sigma_vp * output) / alpha
    if kind == "v_prediction":
        return alpha * x_vp - sigma_vp * output
    check_prediction_type(kind)
    return output


def prediction_from_x0(kind: str, x0, x_vp, alpha, sigma_vp):
    """The model output that gives ``x0`` for VP sample x_vp (the inverse of ``x0_from_prediction``)."""
    if kind == "sample":
        return x0
    eps = (x_vp - alpha * x0) / sigma_vp
    if kind == "epsilon":
        return eps
    check_prediction_type(kind)
    return alpha * eps - sigma_vp * x0
