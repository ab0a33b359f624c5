"""The forward process: noising a picture the way training does, for a model's own schedule.

x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4), with abar from the model's training
schedule at a timestep, or abar = 1 / (1 + sigma^2) at a noise level sigma (Karras et al. 2022). This is
what the UNet is shown during training at that noise level, and what it sees during sampling there.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import checks
from .errors import InvalidArgument
from . import noise_schedules as S


def add_noise(image_or_latents, *, sigma: float | Sequence[float] | None = None,
              timestep: float | Sequence[float] | None = None, seed: int = 0, lab=None) -> torch.Tensor:
    """Noise a picture (PIL image or H x W x 3 uint8 array, encoded with ``lab``'s VAE) or latents
    (4 x h x w or 1 x 4 x h x w) at one or several noise levels, all with the same noise (a CPU generator
    seeded with ``seed``). Give ``sigma`` or ``timestep`` (the model's training timesteps, 0..T-1,
    fractional allowed; needs ``lab`` for its schedule, else Stable Diffusion's).

    Returns the variance-preserving latents the UNet sees: (L, 4, h, w) for L levels of one picture, or
    (B, 4, h, w) for a batch of latents at one level. ``lab.decode(...)`` shows them."""
    if (sigma is None) == (timestep is None):
        raise InvalidArgument("add_noise needs exactly one of sigma=... (noise levels) or timestep=... (training "
                              "timesteps).", argument="sigma")
    if lab is not None:
        checks.lab("lab", lab)
    seed = checks.whole("seed", seed, low=0, high=2 ** 64 - 1)
    if sigma is not None:
        sig = checks.reals("sigma", sigma, low=0, max_size=10_000)
    else:
        training = S.TrainingSchedule.of(lab)
        T = training.num_train_timesteps
        sig = training._t_to_sigma(checks.reals("timestep", timestep, low=0, high=T - 1, max_size=10_000))
    x0 = _latents(image_or_latents, lab)
    if len(sig) > 1 and len(x0) > 1:
        raise InvalidArgument(f"Give one picture with several noise levels, or several with one; got {len(x0)} "
                         f"pictures and {len(sig)} levels.")
    noise = torch.randn(x0.shape[1:], generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float64)
    a = torch.as_tensor(S.vp_scale(sig))[:, None, None, None]  # sqrt(abar)
    return (a * x0.double() + torch.sqrt(1 - a * a) * noise).float()


def _latents(x, lab) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return checks.latents("image_or_latents", x).detach().float().cpu()
    if lab is None:
        raise InvalidArgument("image_or_latents: to noise a picture, pass lab=... (its VAE encodes the picture), or "
                              "pass latents (a tensor).", argument="image_or_latents")
    try:
        return lab.encode(x)
    except InvalidArgument as exc:
        raise InvalidArgument(f"image_or_latents: {exc}", argument="image_or_latents") from None
