"""The teaching model's data: procedurally drawn pictures, their latents, the decoder map and the words.

Every picture is one shape on a paper-coloured background: 4 shapes x 6 colours x 3 columns x 3 rows x
2 sizes = 432 pictures. They live in a 4-channel latent space at 1/8 of the image resolution, like
Stable Diffusion's:

- channels 1-3 hold the shape's colour where the shape is (0 elsewhere): the six colours sit at
  the ends of three axes, red (+1) / green (-1) on channel 1, yellow / blue on channel 2, orange / purple
  on channel 3, symmetric about their mean (0), so that classifier-free guidance, which extrapolates
  away from the mean, moves a colour further out on its own axis rather than towards another colour;
- channel 4 holds the shape: +1 inside, -1 outside, with a smooth edge (a tanh of the signed distance).

The decoder is fixed and smooth: it upsamples the latents bilinearly and maps each pixel to RGB with
``latent_to_rgb``: a quadratic colour map that is exact at the six colours and grey at 0 (beyond +-1 it
over-saturates), and background + sigmoid(kappa * channel 4) x (colour - background), so a 64 x 64
latent draws a crisp 512 x 512 picture. The same map applied at latent resolution is the toy's "approx" preview.

Nothing is stored: the latents are computed for any latent size from the geometry, so the model draws
at any multiple of 8 pixels. Everything here is numpy / torch; nothing imports diffusers.
"""
from __future__ import annotations

import functools
import itertools
import math
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np
import torch
from .. import checks
from ..errors import InvalidArgument

# --- what the pictures are ------------------------------------------------------------------------
GROUPS: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star"),
    "colour": ("red", "orange", "yellow", "green", "blue", "purple"),
    "column": ("left", "center", "right"),
    "row": ("top", "middle", "bottom"),
    "size": ("small", "large"),
}
VALUES: tuple[tuple[str, str], ...] = tuple((g, v) for g, vs in GROUPS.items() for v in vs)  # (group, value)
FEATURES = len(VALUES)  # 18: the width of the text encoder's output

COLOURS_RGB = {  # in [0, 1]
    "red": (0.88, 0.16, 0.16), "orange": (0.97, 0.55, 0.10), "yellow": (0.97, 0.84, 0.16),
    "green": (0.18, 0.66, 0.30), "blue": (0.15, 0.38, 0.85), "purple": (0.56, 0.24, 0.74),
}
BACKGROUND_RGB = (0.94, 0.93, 0.89)
_CENTRES = {"left": 0.25, "center": 0.5, "right": 0.75, "top": 0.25, "middle": 0.5, "bottom": 0.75}
_RADIUS = {"small": 0.11, "large": 0.18}  # fraction of the shorter side
KAPPA = 8.0  # sharpness of the decoder's edge
# The latents are this times the unit codes below (as SD's VAE latents are scaled by 0.18215): it sets
# how much of a picture SD's largest noise level (sigma_max 14.6) still lets through. At 1 the starting
# noise of a 512 px run would already decide position and colour, before the prompt could.
LATENT_SCALE = 0.5
EDGE = 1.5  # width of the latent edge, in latent pixels

AXES = (("red", "green"), ("yellow", "blue"), ("orange", "purple"))  # (+1, -1) on latent channels 1, 2, 3
GREY_RGB = (0.5, 0.5, 0.5)  # what colour latent 0 decodes to

# --- words ----------------------------------------------------------------------------------------
# Each known word means one attribute value; "center" / "centre" / "middle" mean the middle column
# and/or row, whichever of the two the prompt does not name otherwise ("top center": top row, middle column).
WORDS: dict[str, tuple[str, str]] = {}
for _g, _vs in GROUPS.items():
    for _v in _vs:
        WORDS[_v] = (_g, _v)
for _w, _v in {"circles": "circle", "round": "circle", "squares": "square", "box": "square",
               "triangles": "triangle", "stars": "star"}.items():
    WORDS[_w] = ("shape", _v)
WORDS["violet"] = ("colour", "purple")
for _w in ("upper",):
    WORDS[_w] = ("row", "top")
for _w in ("lower",):
    WORDS[_w] = ("row", "bottom")
for _w, _v in {"little": "small", "tiny": "small", "big": "large", "huge": "large"}.items():
    WORDS[_w] = ("size", _v)
CENTRE_WORDS = ("center", "centre", "middle", "centered", "centred")
for _w in CENTRE_WORDS:
    WORDS[_w] = ("position", "center")
# Small words a prompt may contain that mean nothing to the toy; ignored without a notice.
STOP_WORDS = ("a", "an", "the", "in", "on", "at", "of", "and", "with", "to", "is", "one", "some", "shape",
              "picture", "image", "drawing", "corner", "side", "coloured", "colored")


def vocabulary() -> list[str]:
    """The words a prompt can use (stop words, which change nothing, left out)."""
    return list(WORDS)


_WORD_RE = re.compile(r"\w+")  # the toy tokenizer's split (tokenizers' Whitespace pre-tokenizer: \w+|[^\w\s]+)


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as the toy's tokenizer sees them (NFKC, lower case; punctuation and numbers
    are not words)."""
    norm = unicodedata.normalize("NFKC", text or "").lower()
    return [w for w in _WORD_RE.findall(norm) if any(ch.isalpha() for ch in w)]


def unknown_words(text: str) -> list[str]:
    """Words of the prompt the toy does not know (in order, without repeats)."""
    seen: dict[str, None] = {}
    for w in prompt_words(checks.text("text", text)):
        if w not in WORDS and w not in STOP_WORDS:
            seen.setdefault(w)
    return list(seen)


def allowed_vector(meanings) -> np.ndarray:
    """(FEATURES,) 0/1: which attribute values a prompt allows, from the meanings of its known words.

    A group the prompt does not name allows all its values (so it changes nothing); within a group the
    named values are allowed (or); across groups all must hold (and)."""
    named: dict[str, set[str]] = {g: set() for g in GROUPS}
    centre = False
    for m in meanings:
        if m is None:
            continue
        group, value = m
        if group == "position":
            centre = True
        else:
            named[group].add(value)
    if centre:
        for group, value in (("column", "center"), ("row", "middle")):
            if not named[group]:
                named[group].add(value)
    return np.array([1.0 if (not named[g] or v in named[g]) else 0.0 for g, v in VALUES])


def token_features(meanings) -> np.ndarray:
    """(L, FEATURES): what each token of one encoder window says, one row per token: 1 at the attribute value
    the token names, 0 elsewhere (and everywhere for start, end, padding, stop words and unknown words).

    "center" / "middle" name the middle column and / or row, whichever the window names no other value of,
    as ``allowed_vector`` reads them. Per token, so that A1111's emphasis (which multiplies each token's
    embedding by its weight) reaches the attribute the word names."""
    meanings = list(meanings)
    named = {m[0] for m in meanings if m is not None}
    out = np.zeros((len(meanings), FEATURES))
    index = {gv: i for i, gv in enumerate(VALUES)}
    for row, m in enumerate(meanings):
        if m is None:
            continue
        if m[0] == "position":
            for group, value in (("column", "center"), ("row", "middle")):
                if group not in named:
                    out[row, index[(group, value)]] = 1.0
        else:
            out[row, index[m]] = 1.0
    return out


def allowed_for(text: str) -> np.ndarray:
    """The allowed-values vector of a prompt (what the toy's text encoder computes from its tokens)."""
    return allowed_vector(WORDS.get(w) for w in prompt_words(checks.text("text", text)))


# --- pictures -------------------------------------------------------------------------------------
def attributes() -> list[dict[str, str]]:
    """One dict per picture, in the dataset's order."""
    return [dict(zip(GROUPS, combo)) for combo in itertools.product(*GROUPS.values())]


def _polygon(kind: str, cx: float, cy: float, r: float) -> np.ndarray:
    if kind == "square":
        h = 0.82 * r
        return np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]])
    if kind == "triangle":
        R = 1.15 * r
        angles = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([cx + R * np.cos(angles), cy + 0.12 * r + R * np.sin(angles)], axis=1)
    if kind == "star":
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.2 * r, 0.5 * r)
        return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    raise InvalidArgument(kind)


def _signed_distance(kind: str, cx: float, cy: float, r: float, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from pixel centres to the shape, in pixels."""
    if kind == "circle":
        return np.hypot(px - cx, py - cy) - r
    poly = _polygon(kind, cx, cy, r)
    a, b = poly, np.roll(poly, -1, axis=0)
    p = np.stack([px.ravel(), py.ravel()], axis=1)[:, None, :]  # (P, 1, 2)
    ab = (b - a)[None]
    t = np.clip(((p - a[None]) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    dist = np.linalg.norm(p - (a[None] + t[..., None] * ab), axis=-1).min(axis=1)
    # even-odd rule for inside
    ya, yb, xa, xb = a[:, 1][None], b[:, 1][None], a[:, 0][None], b[:, 0][None]
    py_, px_ = p[..., 1], p[..., 0]
    crosses = ((ya > py_) != (yb > py_)) & (px_ < (xb - xa) * (py_ - ya) / (yb - ya + 1e-300) + xa)
    inside = crosses.sum(axis=1) % 2 == 1
    return np.where(inside, -dist, dist).reshape(px.shape)


def shape_mask(shape: str, column: str, row: str, size: str, h: int, w: int) -> np.ndarray:
    """Latent channel 4 of a picture: tanh of minus the signed distance over EDGE (+1 inside, -1 outside)."""
    py, px = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    r = _RADIUS[size] * min(h, w)
    sdf = _signed_distance(shape, _CENTRES[column] * w, _CENTRES[row] * h, r, px, py)
    return np.tanh(-sdf / EDGE)


def colour_latent(colour: str) -> np.ndarray:
    """Latent channels 1-3 of a colour (unit code): +1 or -1 on its axis, 0 on the others."""
    out = np.zeros(3)
    for k, (plus, minus) in enumerate(AXES):
        if colour in (plus, minus):
            out[k] = 1.0 if colour == plus else -1.0
    return out


def _signed(rgb) -> torch.Tensor:
    return 2 * torch.as_tensor(rgb, dtype=torch.float32) - 1


def _colour_map() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grey, linear, quadratic) such that colour(u) = grey + sum_k u_k linear_k + u_k^2 quadratic_k."""
    grey = _signed(GREY_RGB)
    plus = torch.stack([_signed(COLOURS_RGB[a]) for a, _ in AXES])
    minus = torch.stack([_signed(COLOURS_RGB[b]) for _, b in AXES])
    return grey, (plus - minus) / 2, (plus + minus) / 2 - grey


@dataclass(frozen=True)
class Factors:
    """The pictures, held as what they are made of: 72 shape masks (shape x column x row x size) and a
    colour per picture. Picture j's latents are channel 4 = mask M_k and channels 1-3 = colour_j x
    (1 + M_k) / 2 (the colour lives where the shape is), k = mask_of[j].

    Inner products with all 432 pictures then cost 72 mask products instead of 432 full ones, exactly."""

    masks: np.ndarray  # (K, h*w) float64
    mask_of: np.ndarray  # (N,) int: which mask each picture uses
    colours: np.ndarray  # (N, 3) float64: each picture's colour latent
    onehot: np.ndarray = field(repr=False)  # (N, FEATURES): each picture's attribute values
    height: int = 0  # latent rows
    width: int = 0  # latent columns

    @property
    def fills(self) -> np.ndarray:
        """(K, h*w): where each mask's colour shows, (1 + M) / 2."""
        return (1 + self.masks) / 2

    @property
    def latents(self) -> np.ndarray:
        """(N, 4, h, w) in unit codes; the model's latents are LATENT_SCALE times these."""
        fill = self.fills[self.mask_of]  # (N, hw)
        out = np.concatenate([self.colours[:, :, None] * fill[:, None], self.masks[self.mask_of][:, None]], axis=1)
        return out.reshape(len(self.mask_of), 4, self.height, self.width)


@functools.lru_cache(maxsize=4)
def factors(height: int, width: int) -> Factors:
    """The dataset's latents at latent size height x width (image size / 8), as masks and colours."""
    attrs = attributes()
    keys: dict[tuple, int] = {}
    masks, mask_of = [], []
    for a in attrs:
        key = (a["shape"], a["column"], a["row"], a["size"])
        if key not in keys:
            keys[key] = len(masks)
            masks.append(shape_mask(*key, height, width).ravel())
        mask_of.append(keys[key])
    index = {v: i for i, v in enumerate(VALUES)}
    onehot = np.zeros((len(attrs), FEATURES))
    for j, a in enumerate(attrs):
        for g, v in a.items():
            onehot[j, index[(g, v)]] = 1.0
    return Factors(masks=np.stack(masks), mask_of=np.array(mask_of), colours=np.stack([colour_latent(a["colour"]) for a in attrs]),
                   onehot=onehot, height=height, width=width)


# --- the decoder ----------------------------------------------------------------------------------
def latent_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) latents -> (B, 3, h, w) RGB in [-1, 1], pixel by pixel (the toy's whole decoder
    after upsampling, and its approx preview at latent resolution)."""
    z = latents.float() / LATENT_SCALE
    grey, lin, quad = (t.to(z.device) for t in _colour_map())
    u = z[:, :3]
    fg = grey[None, :, None, None] + torch.einsum("kr,bkhw->brhw", lin, u) + torch.einsum("kr,bkhw->brhw", quad, u * u)
    bg = _signed(BACKGROUND_RGB).to(z.device)[None, :, None, None]
    alpha = torch.sigmoid(KAPPA * z[:, 3:4])
    return (bg + alpha * (fg - bg)).clamp(-1, 1)


def decode(latents: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """(B, 4, h, w) -> (B, 3, scale*h, scale*w) in [-1, 1]: bilinear upsampling, then latent_to_rgb."""
    up = torch.nn.functional.interpolate(latents.float(), scale_factor=scale, mode="bilinear", align_corners=False)
    return latent_to_rgb(up)


def encode(images: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """An approximate inverse of ``decode`` for (B, 3, H, W) images in [-1, 1]: the colour most unlike
    the background, snapped to the nearest of the six, becomes channels 1-3; how far each pixel is
    towards it becomes channel 4. For the toy's own pictures it gives back their latents closely."""
    x = torch.nn.functional.avg_pool2d(images.double(), scale)  # (B, 3, h, w)
    bg = _signed(BACKGROUND_RGB).double().to(x.device)[None, :, None, None]
    diff = x - bg
    weight = (diff ** 2).sum(1, keepdim=True) ** 2  # (B, 1, h, w): pixels least like the background count most
    fg = (x * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1e-12)  # (B, 3)
    palette = torch.stack([_signed(COLOURS_RGB[c]) for c in GROUPS["colour"]]).double().to(x.device)
    nearest = torch.cdist(fg, palette).argmin(dim=1)
    direction = palette[nearest][:, :, None, None] - bg
    alpha = ((diff * direction).sum(1, keepdim=True) / (direction ** 2).sum(1, keepdim=True).clamp_min(1e-12))
    alpha = alpha.clamp(1e-4, 1 - 1e-4)
    mask = (torch.log(alpha / (1 - alpha)) / KAPPA).clamp(-1, 1)
    codes = torch.as_tensor(np.stack([colour_latent(c) for c in GROUPS["colour"]]), device=x.device)
    colour = codes[nearest][:, :, None, None] * (1 + mask) / 2
    return LATENT_SCALE * torch.cat([colour, mask], dim=1).to(images.dtype if images.is_floating_point() else torch.float32)


# --- the dataset as users see it ------------------------------------------------------------------
class Pictures:
    """The dataset's pictures as an N x H x W x 3 uint8 array, decoded on demand (all 432 at 512 px
    would take 340 MB). Index it like an array; ``np.asarray(pictures)`` decodes them all."""

    def __init__(self, latents: torch.Tensor):
        self._latents = latents

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self._latents.shape
        return n, 8 * h, 8 * w, 3

    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self._latents)

    def __getitem__(self, index):
        single = isinstance(index, (int, np.integer))
        z = self._latents[index]
        z = z[None] if single else z
        out = to_uint8(decode(z))
        return out[0] if single else out

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([self[i:i + 16] for i in range(0, len(self), 16)])
        return out if dtype is None else out.astype(dtype)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded as diffusers' image processor does."""
    return ((rgb.clamp(-1, 1) / 2 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Dataset:
    """The toy model's pictures: ``images`` (N x H x W x 3 uint8, decoded on demand), ``latents``
    (N x 4 x H/8 x W/8), ``attributes`` (one dict per picture) and ``vocabulary`` (the words a prompt
    can use)."""

    latents: torch.Tensor
    attributes: list[dict[str, str]]
    vocabulary: list[str]
    images: Pictures

    def __len__(self) -> int:
        return len(self.attributes)

    def find(self, **attrs: str) -> list[int]:
        """Indices of the pictures with these attributes, e.g. find(colour="red", shape="circle")."""
        bad = set(attrs) - set(GROUPS)
        if bad:
            raise InvalidArgument(f"Unknown attribute(s) {sorted(bad)}; the attributes are {', '.join(GROUPS)}.",
                                  argument=sorted(bad)[0])
        for k, v in attrs.items():
            checks.choice(k, v, GROUPS[k])
        return [i for i, a in enumerate(self.attributes) if all(a[k] == v for k, v in attrs.items())]

    def follows(self, latents: torch.Tensor, prompt: str, negative_prompt: str = "") -> bool:
        """Whether the picture ``latents`` land on (the nearest one) has every attribute the prompt asks
        for and none the negative prompt names: the teaching model's measure of prompt adherence (on
        its own pictures it is exact; "a red circle" is followed by any red circle, wherever it is)."""
        attrs = self.attributes[self.nearest(latents)[0]]
        have = np.array([1.0 if attrs[g] == v else 0.0 for g, v in VALUES])
        wanted = allowed_for(prompt)
        if (have * wanted).sum() < len(GROUPS):  # some group's value is not one the prompt allows
            return False
        negative = checks.text("negative_prompt", negative_prompt)
        named = {WORDS[w] for w in prompt_words(negative) if WORDS.get(w) and WORDS[w][0] != "position"}
        return not any(attrs[g] == v for g, v in named)

    def adherence(self, runs, prompt: str | None = None, negative_prompt: str | None = None) -> float:
        """The fraction of ``runs`` (Runs, or a Sweep's row) whose pictures follow their prompt (``follows``);
        prompt / negative_prompt: to judge against other words than the runs' own."""
        runs = [r for r in runs if r is not None]
        if not runs:
            raise InvalidArgument("runs is empty: adherence needs at least one run.", argument="runs")
        ok = [self.follows(r.final_latents[0], r.settings.prompt if prompt is None else prompt,
                           r.settings.negative_prompt if negative_prompt is None else negative_prompt) for r in runs]
        return sum(ok) / len(ok)

    def nearest(self, latents: torch.Tensor) -> tuple[int, float]:
        """(index, RMS distance) of the picture whose latents are nearest to ``latents`` (4 x h x w)."""
        z = checks.latents("latents", latents, channels=self.latents.shape[1], size=tuple(self.latents.shape[2:]))
        if z.shape[0] != 1:
            raise InvalidArgument(f"latents must be one picture's (1, C, h, w) or (C, h, w), not a batch of {z.shape[0]}.",
                                  argument="latents")
        z = z.double().reshape(1, -1)
        d = torch.cdist(z, self.latents.double().reshape(len(self), -1))[0]
        i = int(d.argmin())
        return i, float(d[i]) / math.sqrt(z.shape[1])


def memory_bytes(height: int, width: int) -> int:
    """About what the toy's pictures take at latent size height x width: its masks and the pictures' latents
    in float64 (``factors``), and their float32 copy."""
    n, masks = len(attributes()), len(GROUPS["shape"]) * 3 * 3 * len(GROUPS["size"])
    return int(height) * int(width) * ((masks + 4 * n) * 8 + 4 * n * 4)


def dataset(width: int = 512, height: int = 512) -> Dataset:
    """The toy model's 432 pictures at ``width`` x ``height`` pixels (multiples of 8)."""
    for name, v in (("width", width), ("height", height)):
        v = checks.whole(name, v, low=8)
        if v % 8:
            raise InvalidArgument(f"{name}={v!r} must be a positive multiple of 8 (the toy's latents are 1/8 of the "
                                  "image).", argument=name)
    width, height = int(width), int(height)
    from ..devices import free_memory_bytes, gib

    need, free = memory_bytes(height // 8, width // 8), free_memory_bytes(torch.device("cpu"))
    if free is not None and need > free:
        side = int((width * height * free / need) ** 0.5) // 8 * 8
        raise InvalidArgument(f"The toy's pictures at width={width}, height={height} need about {gib(need)}, and {gib(free)} is free: "
                         f"the largest square size that fits is about {side}x{side}.")
    f = factors(height // 8, width // 8)
    latents = torch.from_numpy(LATENT_SCALE * f.latents).float()
    return Dataset(latents=latents, attributes=attributes(), vocabulary=vocabulary(), images=Pictures(latents))
