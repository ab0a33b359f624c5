"""A1111's noise on any device: its three random sources, variation seeds, "Seed resize from" and ENSD.

A1111 (its setting "Random number generator source", infotext ``RNG:``; behaviour of its modules/rng.py and
rng_philox.py, PR #9734, written here from that behaviour and from the sources below, not from its AGPL code):

- Every image of a batch has its own seed, ``seed + i`` (with a variation seed: the seed, and ``subseed + i``),
  and its own generator, which draws the image's starting noise (C, H, W) and then, step after step, the noise
  of ancestral samplers; DPM++ SDE's Brownian tree is seeded with the images' seeds too.
- "CPU": ``torch.randn`` with a CPU ``torch.Generator``. For one image this is what diffusers draws with
  ``generator=torch.Generator().manual_seed(seed)``, so sdlab's default runs are unchanged.
- "GPU" (A1111's default): ``torch.randn`` on the CUDA device. The same seed gives other numbers than on the
  CPU (diffusers issue 13298).
- "NV": the CUDA generator emulated on the CPU. ``torch.randn`` on CUDA (aten/src/ATen/native/cuda/
  DistributionTemplates.h, ``normal_and_transform``) gives element i of a tensor drawn in one pass of its
  kernel the first output of cuRAND's ``curand_normal4`` for subsequence i: the Philox 4x32-10 counter-based
  generator (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11) with key =
  the 64-bit seed and counter = (the generator's call count, 0, i, 0), whose first two 32-bit outputs x, y
  become one normal number by the Box-Muller transform: u = (x + 1/2) 2^-32, v = (y + 1/2) 2^-32 2 pi,
  z = sqrt(-2 ln u) sin v. A1111 evaluates the transform in double precision with cuRAND's single-precision
  constants and rounds z to float32; sdlab does the same, so its "nv" noise is A1111's NV noise bit for bit.
  cuRAND evaluates the transform in single precision, so against a GPU's own ``torch.randn`` the numbers agree
  to float32 rounding (a ``gpu`` test measures it where a GPU is lent). One pass covers every SD latent up to
  the GPU's resident threads (multiprocessors x 2048 on most GPUs, x 1536 on sm_86 / sm_89): beyond that torch
  strides the tensor differently, and so does the GPU's noise.
- Variation seed (``subseed``, ``subseed_strength``): the noise is A1111's spherical interpolation
  ``slerp(strength, noise(seed), noise(subseed))``: strength 0 is the seed's noise, 1 the subseed's. As in
  A1111 the vectors interpolated are the columns of each channel (norms over the rows, dim 1 of C x H x W), and
  where they are nearly parallel (mean cosine > 0.9995) A1111 falls back to ``low * strength + high * (1 -
  strength)``, which sdlab keeps as written.
- "Seed resize from" W x H: the noise is drawn at that size and pasted, centred, into the seed's noise at the
  new size (cropped where the new size is smaller), so a picture keeps its composition when resized.
- ENSD ("Eta noise seed delta", NovelAI's 31337): after the starting noise the generators are made again
  with ``seed + i + ENSD``, so only the per-step noise of samplers that add noise changes.

Data in, tensors out: numpy and torch only; no pipeline, no widgets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import checks
from .errors import InvalidArgument

SOURCES = ("cpu", "gpu", "nv")
MAX_NUMBERS = 1 << 26  # what sdlab.noise draws at most: 4x more than a batch of 64 SDXL latents, about 40 s as NV
A1111_RNG = {"CPU": "cpu", "GPU": "gpu", "NV": "nv"}  # infotext "RNG: NV" -> sdlab's name
RNG_LABEL = {v: k for k, v in A1111_RNG.items()}

# Philox 4x32-10's multipliers and Weyl key increments (Salmon et al. 2011, table 2; Random123's philox.h)
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
# cuRAND's Box-Muller constants, in single precision (curand_normal.h: CURAND_2POW32_INV, ..._2PI)
TWO_POW32_INV = np.float32(2.3283064e-10)
TWO_POW32_INV_2PI = np.float32(2.3283064e-10) * np.float32(6.2831855)


def source_name(value, name: str = "rng") -> str:
    """``rng`` checked: sdlab's names, or A1111's infotext ones ("NV", "GPU", "CPU"), in any case."""
    if isinstance(value, str) and value.strip().lower() in SOURCES:
        return value.strip().lower()
    return checks.choice(name, value, SOURCES, hint=" 'cpu' is diffusers' (and sdlab's) default; A1111's is "
                                                   "'gpu', and 'nv' reproduces it on any device.")


def philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox 4x32 with 10 rounds, vectorised: counter (4, n) and key (2, n) of 32-bit words -> (4, n) uint32.

    Each round multiplies words 0 and 2 by the two constants into 64-bit products and mixes their halves with
    words 1 and 3 and the key; the key is bumped by the Weyl constants between rounds (Salmon et al. 2011)."""
    c = [np.asarray(counter[i], dtype=np.uint64) & _MASK for i in range(4)]
    k0, k1 = (np.asarray(key[i], dtype=np.uint64) & _MASK for i in range(2))
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    w0, w1 = np.uint64(PHILOX_W[0]), np.uint64(PHILOX_W[1])
    for r in range(10):
        if r:
            k0, k1 = (k0 + w0) & _MASK, (k1 + w1) & _MASK
        p0, p1 = m0 * c[0], m1 * c[2]  # < 2^64: exact in uint64
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _MASK]
    return np.stack(c).astype(np.uint32)


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One standard normal number per pair of 32-bit words, as cuRAND's Box-Muller transform (first output)."""
    u = x.astype(np.float64) * TWO_POW32_INV + TWO_POW32_INV / 2
    v = y.astype(np.float64) * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class NVGenerator:
    """The CUDA generator of one seed, emulated on the CPU: each ``randn`` call is one kernel launch, which moves
    the generator's Philox counter on by one (torch's offset by 4 for a tensor drawn in one pass)."""

    def __init__(self, seed: int):
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # torch keeps a seed as 64 bits
        self.calls = 0

    CHUNK = 1 << 20  # numbers computed at once (Philox's 64-bit intermediates: about 100 bytes per number)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        n = int(np.prod(shape))
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, self.CHUNK):
            i = np.arange(start, min(n, start + self.CHUNK), dtype=np.uint64)
            m = len(i)
            counter = np.stack([np.full(m, self.calls & 0xFFFFFFFF, dtype=np.uint64),
                                np.full(m, self.calls >> 32, dtype=np.uint64), i & _MASK, i >> np.uint64(32)])
            key = np.stack([np.full(m, self.seed & 0xFFFFFFFF, dtype=np.uint64),
                            np.full(m, self.seed >> 32, dtype=np.uint64)])
            words = philox4x32_10(counter, key)
            out[start:start + m] = box_muller(words[0], words[1])
        self.calls += 1
        return torch.from_numpy(out.reshape(tuple(shape)))


def _generator(source: str, seed: int):
    if source == "nv":
        return NVGenerator(seed)
    return torch.Generator("cuda" if source == "gpu" else "cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)


def _draw(source: str, generator, shape: Sequence[int]) -> torch.Tensor:
    """(C, H, W) float32 on the CPU from one image's generator."""
    if source == "nv":
        return generator.randn(shape)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32).cpu()


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two (C, H, W) noises, column by column (see the module docstring)."""
    low_n = low / torch.norm(low, dim=1, keepdim=True)
    high_n = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1)
    if dot.mean() > 0.9995:  # nearly parallel: A1111's linear fallback, as A1111 writes it
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1) * low + (torch.sin(strength * omega) / so).unsqueeze(1) * high


def paste_centred(small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """``large`` with ``small`` pasted into its centre (cropped to fit where ``small`` is the larger one):
    A1111's "Seed resize from"."""
    out = large.clone()
    (_, h0, w0), (_, h1, w1) = small.shape, large.shape
    dy, dx = (h1 - h0) // 2, (w1 - w0) // 2
    h, w = (h0 if dy >= 0 else h0 + 2 * dy), (w0 if dx >= 0 else w0 + 2 * dx)
    ty, tx, sy, sx = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return out


@dataclass
class ImageNoise:
    """The noise of one batch, A1111's way: ``first()`` the starting noise (B, C, H, W), then ``next()`` each
    further draw (the per-step noise of a sampler that adds noise), from each image's own generator."""

    source: str
    seeds: list[int]
    shape: tuple[int, int, int]  # (C, H, W) of one image's latents
    subseeds: list[int] | None = None
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] | None = None  # (H, W) of the latents the noise was first drawn at
    ensd: int = 0
    generators: list = field(default_factory=list)
    drawn: int = 0

    def __post_init__(self):
        self.generators = [_generator(self.source, s) for s in self.seeds]

    def first(self) -> torch.Tensor:
        c, h, w = self.shape
        at = (c, *self.resize_from) if self.resize_from and tuple(self.resize_from) != (h, w) else self.shape
        out = []
        for i, (seed, g) in enumerate(zip(self.seeds, self.generators)):
            sub = None
            if self.subseeds is not None and self.subseed_strength != 0:
                sub = _draw(self.source, _generator(self.source, self.subseeds[i]), at)
            x = _draw(self.source, g if at == self.shape else _generator(self.source, seed), at)
            if sub is not None:
                x = slerp(self.subseed_strength, x, sub)
            if at != self.shape:  # drawn at the old size: pasted into the seed's noise at the new size
                x = paste_centred(x, _draw(self.source, g, self.shape))
            out.append(x)
        if self.ensd:
            self.generators = [_generator(self.source, s + self.ensd) for s in self.seeds]
        self.drawn += 1
        return torch.stack(out)

    def next(self) -> torch.Tensor:
        if not self.drawn:
            return self.first()
        self.drawn += 1
        return torch.stack([_draw(self.source, g, self.shape) for g in self.generators])


def image_seeds(seed: int, batch: int, subseed_strength: float = 0.0) -> list[int]:
    """A1111's seeds of a batch: seed + i for image i; with a variation seed mixed in, every image keeps the
    seed and only the variation seed steps (modules/processing.py: all_seeds, all_subseeds)."""
    return [int(seed) + (0 if subseed_strength else i) for i in range(batch)]


def resize_from(name: str, value) -> tuple[int, int] | None:
    """``seed_resize_from`` checked: None, (width, height) in pixels, or A1111's "WxH" text."""
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*x\s*\d+\s*", value):
        value = tuple(int(v) for v in value.lower().split("x"))
    hint = " It is (width, height) in pixels of the picture the seed was first used for; None for no resize (A1111's 0)."
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InvalidArgument(f"{name} must be (width, height) in pixels, such as (512, 512), or None, not "
                              f"{value!r:.60}.{hint}", argument=name)
    return tuple(checks.wholes(name, value, low=8, high=1 << 16, hint=hint))


def noise(seed, shape, source: str = "cpu", subseed=None, subseed_strength: float = 0.0,
          seed_resize_from=None) -> torch.Tensor:
    """The starting latents A1111 would draw, as a float32 CPU tensor of ``shape`` (B, C, H, W) or (C, H, W)
    (one image). ``source``: "cpu", "gpu" (a CUDA generator where CUDA is present, else "nv", saying so) or
    "nv"; image i of a batch is seeded with ``seed + i``, or, with a variation seed mixed in, the seed and
    ``subseed + i``; ``seed_resize_from``: (width, height) in pixels of the picture the seed was first used for."""
    from .notices import notice

    source = source_name(source, "source")
    seed = checks.whole("seed", seed, low=0, high=2 ** 63 - 1)
    dims = checks.wholes("shape", shape, low=1, high=1 << 16)
    if len(dims) not in (3, 4):
        raise InvalidArgument(f"shape must be (batch, channels, height, width) or (channels, height, width), not "
                              f"{tuple(dims)}.", argument="shape")
    one = len(dims) == 3
    b, c, h, w = (1, *dims) if one else dims
    if b * c * h * w > MAX_NUMBERS:
        raise InvalidArgument(f"shape {tuple(dims)} holds {b * c * h * w:,} numbers; at most {MAX_NUMBERS:,} are drawn "
                              "(a batch of 64 latents at 1024 px is 16.8 million).", argument="shape")
    strength = checks.number("subseed_strength", subseed_strength, low=0, high=1,
                             hint=" 0 is the seed's noise, 1 the subseed's.")
    subseeds = None
    if subseed is not None:
        subseeds = image_seeds(checks.whole("subseed", subseed, low=0, high=2 ** 63 - 1), b)  # (subseed + i)
    elif strength:
        raise InvalidArgument("subseed_strength is set but there is no subseed: give subseed=... as well.",
                              argument="subseed")
    resize = resize_from("seed_resize_from", seed_resize_from)
    if resize is not None:
        resize = (resize[1] // 8, resize[0] // 8)  # (latent rows, columns), as A1111 divides the pixels by 8
    if source == "gpu" and not torch.cuda.is_available():
        notice("sdlab: rng='gpu' without a GPU: drawing A1111's NV noise, the CUDA generator emulated on the CPU.")
        source = "nv"
    got = ImageNoise(source, image_seeds(seed, b, strength), (c, h, w), subseeds, strength, resize).first()
    return got[0] if one else got


# --- per-step noise during a run ---------------------------------------------------------------------
# diffusers' schedulers draw the noise they add with ``randn_tensor(shape, generator=...)``, a name each
# scheduler module imports from diffusers.utils.torch_utils. A run with the NV source hands the pipeline a
# generator of its own as a marker; the modules' ``randn_tensor`` is replaced once by a function that, in the
# thread of such a run and for that marker only, returns the run's next NV draw, and otherwise calls diffusers'
# own. Nothing changes for any other call. (Noise a scheduler draws another way, such as DPM++ SDE's Brownian
# tree, keeps its own source.)
import sys as _sys
import threading as _threading
from contextlib import contextmanager as _contextmanager

_ACTIVE = _threading.local()


def _dispatching(original):
    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None, **kwargs):
        active = getattr(_ACTIVE, "noise", None)
        if active is not None and generator is active[0]:
            x = active[1].next()
            if tuple(x.shape) != tuple(shape):
                raise InvalidArgument(f"The sampler asked for noise of shape {tuple(shape)}; the run's noise is "
                                      f"{tuple(x.shape)}. Use rng='cpu' with this sampler.", argument="rng")
            return x.to(device=device or "cpu", dtype=dtype or torch.float32)
        return original(shape, generator=generator, device=device, dtype=dtype, layout=layout, **kwargs)

    randn_tensor.sdlab_original = original
    return randn_tensor


@_contextmanager
def per_step_noise(scheduler, marker, image_noise: ImageNoise):
    """While the block runs in this thread, the scheduler's noise for ``marker`` comes from ``image_noise``."""
    for cls in type(scheduler).__mro__:
        module = _sys.modules.get(cls.__module__)
        current = getattr(module, "randn_tensor", None)
        if current is not None and not hasattr(current, "sdlab_original"):
            module.randn_tensor = _dispatching(current)
    _ACTIVE.noise = (marker, image_noise)
    try:
        yield
    finally:
        _ACTIVE.noise = None
