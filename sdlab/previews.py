"""Turning latents into pictures while a run is going: approx (linear map), taesd, or the full VAE.

Cost design, from FLOPs counted with torch.utils.flop_counter on SD 1.5's architecture at 512 px: a UNet
step with CFG is ~1.6 TFLOP, a full VAE decode ~2.5 TFLOP (+160 % per previewed step), a TAESD decode
(madebyollin/taesd, a 1.2 M-parameter decoder against the VAE's 49.5 M) ~0.14 (+9 %), the linear map
next to nothing. So:
- ``approx`` runs every step: a 4x3 matrix product on the device, then only the small uint8 RGB image
  (3 x h/8 x w/8) is copied to the host. That copy is the one host-device sync a preview costs, and it
  reads exactly what is shown.
- ``taesd`` and ``vae`` are throttled by a time budget: their decodes may take at most ``budget`` of the
  run's time so far (4 % and 7 %), and come at least ``min_interval`` apart. Before the first decode its cost
  is estimated from the measured step time and the FLOP ratio above (TAESD 0.1 x a step, the VAE 1.6 x);
  after it, the measured cost is used. A step that is not due is not decoded at all (no queue builds up).
  So a short, fast run may show no expensive frame at all: its final picture comes with the run.
Decoders return HxWx3 uint8 numpy arrays; ``to_jpeg`` encodes one for a widget.
"""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from .errors import InvalidArgument, SdlabError

Decoder = Literal["approx", "taesd", "vae"]
Target = Literal["x0", "xt"]
DECODERS: tuple[str, ...] = ("approx", "taesd", "vae")
TARGETS: tuple[str, ...] = ("x0", "xt")

# A1111 "Approx cheap" latent -> RGB factors (rows: latent channels; columns: R, G, B), output in [-1, 1].
APPROX_SD1 = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
APPROX_SDXL = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
               [-0.3730, -0.2499, -0.2088]]
TAESD_REPOS = {"sd1": "madebyollin/taesd", "sd2": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
# Default minimum seconds between two decodes, per decoder. The budget below is what bounds their cost; this
# only keeps frames from coming faster than a view can use them. (A1111 refreshes every 1000 ms, but a second
# is most of a short run: the teaching model's 150 steps showed two full-VAE frames, at steps 23 and 109.)
MIN_INTERVAL = {"approx": 0.0, "taesd": 0.2, "vae": 0.2}
# Share of the run's time the throttled decoders may take, and their cost per decode in UNet steps (with
# CFG) before the first one is measured: the FLOP ratios in the module docstring.
BUDGET = {"approx": None, "taesd": 0.04, "vae": 0.07}
COST_IN_STEPS = {"approx": 0.0, "taesd": 0.1, "vae": 1.6}


class PreviewUnavailable(SdlabError, RuntimeError):
    """A preview decoder cannot be used here; the message says how to get it."""


def approx_coefficients(family: str) -> torch.Tensor:
    return torch.tensor(APPROX_SDXL if family == "sdxl" else APPROX_SD1, dtype=torch.float32)


def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] on any device -> (H, W, 3) uint8 on the host."""
    img = ((rgb.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def approx_rgb(latents: torch.Tensor, family: str = "sd1") -> np.ndarray:
    """The cheap latent -> RGB map at latent resolution, on the latents' own device: A1111's linear map
    for SD, and for the toy model its own decoder's per-pixel map (exact, only not upsampled).
    latents: (4, h, w) or (B, 4, h, w) (the first is shown)."""
    if latents.ndim == 4:
        latents = latents[0]
    if family == "toy":
        from .toy.data import latent_to_rgb

        return _to_uint8(latent_to_rgb(latents[None])[0])
    coeffs = approx_coefficients(family).to(latents.device)
    rgb = torch.einsum("chw,cr->rhw", latents.float(), coeffs)
    return _to_uint8(rgb)


@torch.no_grad()
def vae_rgb(vae, latents: torch.Tensor) -> np.ndarray:
    """Full decode with the pipeline's VAE (or an AutoencoderTiny): what the final image will look like."""
    if latents.ndim == 3:
        latents = latents[None]
    latents = latents[:1].to(device=vae.device, dtype=vae.dtype)
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = vae.decode(latents / scale + shift, return_dict=False)[0]
    return _to_uint8(out[0])


def load_taesd(family: str, source: str | Path | None = None, *, device=None, dtype=None):
    """diffusers' AutoencoderTiny for the family, from disk only (a local folder, or the hub cache)."""
    from diffusers import AutoencoderTiny

    if family == "toy" and source is None:
        raise PreviewUnavailable("The toy model has no TAESD: use preview='approx' (its own decoder's map at "
                                 "1/8 resolution, exact and fast) or preview='vae' (its full decoder).")
    source = str(source or TAESD_REPOS.get(family, TAESD_REPOS["sd1"]))
    try:
        with warnings.catch_warnings():  # diffusers passes huggingface_hub a deprecated argument
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            model = AutoencoderTiny.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PreviewUnavailable(
            f"TAESD weights ({source}) are not on this disk, so the 'taesd' preview is unavailable. Fetch them "
            f"once with `hf download {source}` (or pass a local folder as taesd=...), or use preview='approx'."
        ) from exc
    return model.to(device=device, dtype=dtype).eval()


def latent_channels(latents: torch.Tensor) -> np.ndarray:
    """The latent channels as grey images: (C, h, w) uint8, each channel stretched over its own 1-99 %
    range so that structure shows whatever the noise level, but never over less than a thousandth of the
    widest channel's range: a channel that is constant up to rounding (the teaching model's channels 2 and 4
    in a clean x0 hold about 1e-8) shows flat grey, not its rounding noise stretched into a picture."""
    if latents.ndim == 4:
        latents = latents[0]
    x = latents.detach().float().cpu()
    flat = x.flatten(1)
    lo = torch.quantile(flat, 0.01, dim=1)[:, None, None]
    hi = torch.quantile(flat, 0.99, dim=1)[:, None, None]
    span = hi - lo
    width = span.clamp_min(max(float(span.max()) / FLAT_CHANNEL_RATIO, 1e-6))
    out = ((x - (lo + hi) / 2) / width + 0.5).clamp(0, 1) * 255
    return out.round().to(torch.uint8).numpy()


# a channel whose 1-99 % range is under 1/1000 of the widest channel's is shown as flat: SD's four channels
# differ in spread by a few times, a constant one (rounding only) by eight orders of magnitude
FLAT_CHANNEL_RATIO = 1000.0


def to_jpeg(rgb: np.ndarray, quality: int = 85, max_side: int | None = 512, max_bytes: int = 64 * 1024) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 image, its longer side at most max_side. Quality steps down
    until the frame fits in max_bytes (noise-like early steps compress worst)."""
    from PIL import Image

    img = Image.fromarray(rgb)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side))
    for q in (quality, 70, 55, 40, 25):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=min(q, quality))
        if buf.tell() <= max_bytes:
            break
    return buf.getvalue()


@dataclass
class Previewer:
    """Decides, step by step, whether to decode a preview, and decodes it."""

    decoder: Decoder = "approx"
    target: Target = "x0"
    family: str = "sd1"
    vae: object | None = None  # pipeline VAE (for 'vae') or AutoencoderTiny (for 'taesd')
    min_interval: float | None = None
    channels: bool = False  # the caller also wants the latent channels of each previewed step
    budget: float | None = None  # the most of the run's time decodes may take (None: every step, for approx)
    decoded: int = 0
    skipped: int = 0
    spent: float = 0.0  # seconds spent decoding
    _last: float = field(default=-1e9, repr=False)
    _start: float | None = field(default=None, repr=False)
    _calls: int = field(default=0, repr=False)
    _cost: float | None = field(default=None, repr=False)  # the last decode's measured seconds

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise InvalidArgument(f"Unknown preview decoder {self.decoder!r}; choose one of {', '.join(DECODERS)} (or None).")
        if self.target not in TARGETS:
            raise InvalidArgument(f"Unknown preview target {self.target!r}; choose 'x0' (predicted clean image) or 'xt'.")
        if self.min_interval is None:
            self.min_interval = MIN_INTERVAL[self.decoder]
        if self.budget is None:
            self.budget = BUDGET[self.decoder]

    def due(self, last_step: bool = False, now: float | None = None) -> bool:
        """Whether to decode at this call. ``last_step`` forces it for the budget-free approx preview."""
        now = time.perf_counter() if now is None else now
        self._calls += 1
        if self._start is None:
            self._start = now
        if self.budget is None:
            return last_step or now - self._last >= self.min_interval
        if now - self._last < self.min_interval or self._calls < 2:
            return False  # (the first call gives no step time to estimate the cost from)
        elapsed = now - self._start
        cost = self._cost if self._cost is not None else COST_IN_STEPS[self.decoder] * elapsed / (self._calls - 1)
        return self.spent + cost <= self.budget * (elapsed + cost)

    def __call__(self, latents: torch.Tensor, *, last_step: bool = False) -> np.ndarray | None:
        now = time.perf_counter()
        if not self.due(last_step, now):
            self.skipped += 1
            return None
        self._last = now
        self.decoded += 1
        if self.decoder == "approx":
            return approx_rgb(latents, self.family)
        rgb = vae_rgb(self.vae, latents)
        self._cost = time.perf_counter() - now
        self.spent += self._cost
        return rgb
