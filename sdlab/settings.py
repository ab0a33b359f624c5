"""What determines a picture (``Settings``) and how a run is watched (``RunOptions``). Data only.

``Settings`` is the single truth that the Studio's widgets edit, that a saved PNG carries, and that
``read_settings`` gives back. After ``generation.prepare_settings`` it is complete: a seed, a size and the
catalog's own names for the sampler and the concrete schedule ("automatic" resolved).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

import torch
from .errors import InvalidArgument, WrongType

# diffusers' and A1111's names for the same settings
ALIASES = {"guidance_scale": "cfg", "cfg_scale": "cfg", "num_inference_steps": "steps",
           "num_images_per_prompt": "batch_size", "schedule_type": "schedule", "emphasis_mode": "emphasis",
           "randn_source": "rng", "eta_noise_seed_delta": "ensd", "variation_seed": "subseed",
           "variation_seed_strength": "subseed_strength"}


@dataclass
class Settings:
    """Everything that determines a picture. A plain dataclass: the truth that widgets edit."""

    prompt: str = ""
    negative_prompt: str = ""
    cfg: float = 7.0
    sampler: str = "DPM++ 2M"
    schedule: str = "automatic"
    steps: int = 20
    seed: int | None = None  # None: a random seed, recorded in the run
    width: int | None = None  # None: the model's native size
    height: int | None = None
    batch_size: int = 1
    eta: float | None = None  # DDIM / ancestral noise amount where the scheduler takes it
    schedule_params: dict = field(default_factory=dict)
    # How the prompts are read (sdlab.prompt_encoding): "auto" reads A1111's syntax ((word:1.2), [a:b:0.5],
    # BREAK, prompts past 77 tokens) where the prompt has it, "a1111" always, "plain" never (the text goes to
    # the pipeline as it is). emphasis: A1111's "Emphasis mode" ("original", "no_norm", "ignore", "none") or
    # "comfyui"; clip_skip: A1111's Clip skip (1 the text encoder's last layer, 2 the penultimate).
    prompt_syntax: str = "auto"
    emphasis: str = "original"
    clip_skip: int = 1
    # The noise (sdlab.rng): A1111's random source ("cpu", the default and diffusers'; "gpu", A1111's default;
    # "nv", A1111's emulation of the CUDA generator on any device); image i of a batch is seeded seed + i.
    # ensd: A1111's "Eta noise seed delta" (per-step noise seeded seed + i + ensd); subseed / subseed_strength:
    # A1111's variation seed; seed_resize_from: (width, height) in pixels the seed's noise was first drawn at.
    rng: str = "cpu"
    ensd: int = 0
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple | None = None
    # A scheduler given as an object rather than by name: its diffusers class and config
    # ({"_class_name": ..., **config}). When set it decides, and sampler / schedule name its catalog entry.
    scheduler_config: dict | None = None
    extra: dict = field(default_factory=dict)  # fields read from an infotext that sdlab does not use
    # where these settings were read from: "A1111 infotext" (a run then reports what will differ from
    # A1111's own picture), "sdlab" (an sdlab PNG), or None (typed or built in code). Provenance, not part
    # of the picture: settings that differ only here are equal.
    origin: str | None = field(default=None, compare=False)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "Settings":
        return cls().updated(**kwargs)

    def updated(self, **kwargs) -> "Settings":
        """A copy with some fields changed; diffusers' / A1111's names are accepted as aliases."""
        clean, given = {}, {}
        for key, value in kwargs.items():
            name = ALIASES.get(key, key)
            if name not in SETTING_NAMES:
                raise WrongType(f"Unknown setting {key!r}. Settings: {', '.join(sorted(SETTING_NAMES))} "
                                f"(aliases: {', '.join(sorted(ALIASES))}).", argument=key)
            if name in clean:  # cfg=7 with guidance_scale=5: which one was meant cannot be guessed
                raise InvalidArgument(f"{given[name]}={clean[name]!r} and {key}={value!r} are the same setting "
                                      f"({name}); pass one of them.", argument=key)
            clean[name], given[name] = value, key
        return replace(self, **clean)

    def to_dict(self) -> dict:
        return asdict(self)


SETTING_NAMES = frozenset(f.name for f in fields(Settings))


@dataclass(frozen=True)
class RunOptions:
    """How a run is watched (not what it draws): previews, records, the per-step callback."""

    preview: str | None = None  # None, "approx", "taesd" or "vae"
    preview_target: str = "x0"  # "x0" (predicted clean image) or "xt"
    preview_channels: bool = False  # also hand on_step the latent channels of each previewed step
    on_step: Callable[[Any], Any] | None = None  # called with a StepEvent after every UNet call
    record: bool = True  # keep the per-step tensors (latents, x0, both noise predictions)
    record_dtype: torch.dtype = torch.float16  # float16 keeps them small; float32 for checks by hand
    taesd: Any = None  # a local folder for TAESD's weights (preview="taesd")
    attention: bool = False  # record cross-attention maps per step (run.attention; sdlab.attention)


OPTION_NAMES = frozenset(f.name for f in fields(RunOptions))


def split_kwargs(prompt, kwargs: dict) -> tuple[Settings, RunOptions, dict]:
    """generate()'s keyword arguments as (settings, options, the rest)."""
    chosen = {k: v for k, v in kwargs.items() if ALIASES.get(k, k) in SETTING_NAMES}
    options = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
    rest = {k: v for k, v in kwargs.items() if k not in chosen and k not in options}
    if isinstance(prompt, Settings):
        settings = prompt.updated(**chosen)
    else:
        settings = Settings.from_kwargs(**({} if prompt is None else {"prompt": prompt}), **chosen)
    return settings, RunOptions(**options), rest
