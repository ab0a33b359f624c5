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

``x0_from_prediction`` and ``prediction_from_x0`` are the two directions, written for the VE sample as
k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` (k_diffusion/external.py) write them.
They work on numbers, numpy arrays and torch tensors alike; nothing here imports torch or diffusers.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from .errors import InvalidArgument

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def _sqrt(v):
    return v.sqrt() if hasattr(v, "detach") else np.sqrt(v)  # a torch tensor, or numbers / numpy arrays


def vp_scale(sigma):
    """alpha = sqrt(alphabar) = 1 / sqrt(1 + sigma^2): the VP signal scale at VE noise level sigma (numbers and
    numpy arrays in float64; torch tensors in their own dtype)."""
    if hasattr(sigma, "detach"):
        return 1 / (1 + sigma * sigma).sqrt()
    return 1.0 / np.sqrt(1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


def vp_sigma(sigma):
    """sigma_vp = sqrt(1 - alphabar) = sigma alpha: the VP noise scale at VE noise level sigma."""
    return sigma * vp_scale(sigma)


def ve_to_vp(x, sigma):
    """x0 + sigma eps -> alpha x0 + sigma_vp eps (what the UNet sees; k-diffusion's c_in)."""
    return x * vp_scale(sigma)


def vp_to_ve(x, sigma):
    """alpha x0 + sigma_vp eps -> x0 + sigma eps."""
    return x / vp_scale(sigma)


def sample_as_ve(x, sigma, variance_exploding: bool):
    """A scheduler's sample at noise level sigma as x0 + sigma eps: as it is for VE schedulers, unscaled for
    VP ones (``sampler_catalog.is_variance_exploding`` says which)."""
    return x if variance_exploding else vp_to_ve(x, sigma)


def xt_scale(sigma, variance_exploding: bool) -> float:
    """The factor that turns a scheduler's sample into the VP x_t the UNet sees: alpha for VE samples, 1 for VP."""
    return float(vp_scale(float(sigma))) if variance_exploding and sigma is not None else 1.0


def check_prediction_type(kind: str) -> str:
    if kind not in PREDICTION_TYPES:
        raise InvalidArgument(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, not {kind!r}.")
    return kind


def x0_from_prediction(kind: str, output, x, sigma):
    """The clean-sample estimate from a model output, for the VE sample x = x0 + sigma eps (k-diffusion's
    DiscreteEpsDDPMDenoiser: x - sigma eps; DiscreteVDDPMDenoiser: c_skip x + c_out v with c_skip =
    1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1))."""
    if kind == "epsilon":
        return x - sigma * output
    if kind == "v_prediction":
        return x / (sigma * sigma + 1) - sigma / _sqrt(sigma * sigma + 1) * output
    check_prediction_type(kind)
    return output


def prediction_from_x0(kind: str, x0, x, sigma):
    """The model output that gives ``x0`` for the VE sample x (the inverse of ``x0_from_prediction``):
    eps = (x - x0) / sigma, v = alpha eps - sigma_vp x0."""
    if kind == "sample":
        return x0
    eps = (x - x0) / sigma
    if kind == "epsilon":
        return eps
    check_prediction_type(kind)
    alpha = vp_scale(sigma)
    return alpha * eps - sigma * alpha * x0
