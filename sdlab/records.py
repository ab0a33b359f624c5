"""What a run produces: per-call step records, the event on_step receives, and the Run. Data only.

Records hold host copies of 4 tensors of B x 4 x h/8 x w/8 per UNet call (latents, x0, both noise
predictions), float16 unless the run asked for another dtype; ``record_tensor`` is the one answer to
"which tensor does a record show" for previews, plots, statistics and the step viewer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from .errors import InvalidArgument, WrongType

Target = str  # "x0" (predicted clean latents) or "xt" (the sample, variance-preserving)


def record_tensor(target: Target, x0: torch.Tensor | None, latents: torch.Tensor | None, xt_scale: float):
    """The tensor a view shows for a step: the x0 estimate, or the sample scaled to the variance-
    preserving x_t the UNet sees (k-diffusion-style samplers carry x0 + sigma eps; ``xt_scale`` undoes it)."""
    if target == "x0":
        return x0
    if target == "xt":
        return None if latents is None else latents * xt_scale
    raise InvalidArgument(f"Unknown target {target!r}; choose 'x0' (predicted clean image) or 'xt'.",
                          argument="target")


@dataclass
class StepRecord:
    """One UNet call of a run (one pipeline loop iteration; Heun-type samplers make two per step)."""

    index: int  # loop iteration, 0-based
    step: int  # user steps completed after this call, 1..total_steps
    total_steps: int  # N, the user's step count
    timestep: float
    sigma: float | None  # noise level after this call (None where the scheduler has no sigmas)
    nfe: int  # UNet calls so far
    latents: torch.Tensor | None  # the sample after the call (host copy)
    x0: torch.Tensor | None  # predicted clean latents (host copy)
    noise_uncond: torch.Tensor | None  # unconditional noise prediction (None without CFG)
    noise_cond: torch.Tensor | None  # conditional noise prediction
    seconds: float = float("nan")  # wall time of this call
    xt_scale: float = 1.0  # latents x this = the variance-preserving x_t (see record_tensor)
    family: str = "sd1"  # the model family's latent space ("sd1", "sd2", "sdxl", "toy"): how to show the tensors
    # the texts this call was conditioned on: the run's prompt, or with A1111's prompt editing / alternation the
    # schedule's text in effect at this call (emphasis syntax kept; sdlab.prompt_syntax.prompt_weights reads it)
    prompt: str | None = None
    negative_prompt: str | None = None

    @property
    def steps(self) -> int:
        """The user's step count (an alias of ``total_steps``)."""
        return self.total_steps

    def view(self, target: Target = "x0") -> torch.Tensor:
        """The tensor of x0 or x_t of this call as float32 (``record_tensor``); raises if the run kept no
        tensors. ``picture(target)`` shows it as an image."""
        t = record_tensor(target, self.x0, self.latents, self.xt_scale)
        if t is None:
            raise InvalidArgument("This run kept no tensors (record=False); generate with record=True to look inside it.")
        return t.float()


    def picture(self, target: Target = "x0", vae=None):
        """x0 or x_t of this call as a PIL image: the fast approximate preview at latent resolution
        (``previews.approx_rgb``, upscaled for the eye), or decoded with ``vae`` (e.g. ``lab.pipe.vae``)."""
        from PIL import Image

        from .previews import approx_rgb, vae_rgb

        if vae is not None and not callable(getattr(vae, "decode", None)):
            raise WrongType(f"vae must be a VAE (such as lab.pipe.vae) or None, not {type(vae).__name__}.",
                            argument="vae")
        t = self.view(target)
        if vae is not None:
            return Image.fromarray(vae_rgb(vae, t))
        image = Image.fromarray(approx_rgb(t, self.family))
        scale = max(1, 256 // max(image.size))
        return image.resize((image.width * scale, image.height * scale), Image.NEAREST)

    def _repr_png_(self) -> bytes | None:
        """In a notebook a record shows its x0 picture (its tensors: ``view``)."""
        if self.x0 is None:
            return None
        import io

        buf = io.BytesIO()
        self.picture("x0").save(buf, format="PNG")
        return buf.getvalue()


@dataclass
class StepEvent:
    """What ``on_step`` and the widgets receive after every UNet call."""

    run: "Run"
    record: StepRecord
    preview: np.ndarray | None  # HxWx3 uint8, or None when this call was not previewed
    channels: np.ndarray | None = None  # (4, h, w) uint8 latent channels of the previewed tensor, with the preview


@dataclass
class Run:
    """The result of one generation, complete or stopped."""

    settings: Any  # Settings: complete, with the catalog's names for sampler and schedule
    model: str
    family: str
    device: str
    dtype: str
    plan: Any  # sampler_catalog.Plan
    scheduler_report: dict = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)
    images: list = field(default_factory=list)
    final_latents: torch.Tensor | None = None
    stopped: bool = False
    problems: list[str] = field(default_factory=list)
    # those of the problems that were said as notices (SdlabNotice: worth knowing, nothing to fix); the rest
    # were warnings (SdlabWarning: something is probably wrong)
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0
    nsfw: list | None = None
    preview: np.ndarray | None = None
    requested: Any = None  # the Settings as the user gave them (their spelling of the names)
    # what ended the run early, if anything did (an exception in on_step, out of memory, an interrupt):
    # the records up to there stay for inspection
    error: BaseException | None = None
    # torch's CPU threads during the run (None on a GPU): float sums split differently with another count, so a
    # run is bit-identical to another of the same settings on the CPU only with the same count (README)
    threads: int | None = None
    # how sdlab read the prompts when it encoded them itself (A1111 syntax, long prompts, Clip skip): the
    # schedules of texts (sdlab.prompt_encoding.PromptPlan) and the chunks of 75 tokens each conditioning has;
    # None / 1 when the pipeline read plain text
    prompt_plan: Any = None
    prompt_chunks: int = 1
    padded_conds: bool = False  # the prompt and the negative prompt took different chunk counts (padded to one)
    attention: Any = None  # sdlab.attention.AttentionMaps when the run recorded them (attention=True)

    @property
    def steps(self) -> list[StepRecord]:
        """The per-call records (an alias of ``records``)."""
        return self.records

    @property
    def image(self):
        return self.images[0] if self.images else None

    def prompt_shown(self, index: int = -1, negative: bool = False) -> str | None:
        """The prompt record ``index`` was conditioned on (``negative=True``: the negative prompt), as A1111 users
        write it (weights shown as ``(red:1.21)``, ``BREAK`` kept): the text in effect at that call when it is
        edited during the run. None for a run whose prompts the pipeline read as plain text (the settings'
        prompts are all there is), and for the negative prompt of a call without guidance (cfg 1: not used)."""
        from . import checks
        from .prompt_syntax import describe_weights, prompt_weights

        checks.flag("negative", negative)
        if not self.records:
            raise InvalidArgument("This run has no records yet; wait for its first step.", argument="index")
        index = checks.whole("index", index, low=-len(self.records), high=len(self.records) - 1)
        plan = self.prompt_plan
        rec = self.records[index]
        text = rec.negative_prompt if negative else rec.prompt
        if plan is None or text is None:
            return None
        if plan.syntax == "plain" or plan.emphasis == "none":
            return text
        pieces = prompt_weights(text)
        if plan.emphasis == "ignore":
            pieces = [(t, w if (t, w) == ("BREAK", -1.0) else 1.0) for t, w in pieces]
        return describe_weights(pieces)

    def prompt_changes(self, negative: bool = False) -> list[tuple[int, str]]:
        """(record index, 0-based, and the prompt shown) where the prompt in effect changes (``negative=True``:
        the negative prompt), the first record included: one entry for a prompt that is not edited, none for a
        plain-text run (see ``prompt_shown``). ``run.records[i].step`` is the step of record i."""
        from . import checks

        checks.flag("negative", negative)
        if self.prompt_plan is None:
            return []
        out: list[tuple[int, str]] = []
        for i in range(len(self.records)):
            shown = self.prompt_shown(i, negative)
            if shown is not None and (not out or shown != out[-1][1]):
                out.append((i, shown))
        return out

    @property
    def nfe(self) -> int:
        return self.records[-1].nfe if self.records else 0

    @property
    def done(self) -> bool:
        return bool(self.images)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def state(self) -> str:
        """'failed', 'stopped', 'done' or 'running'."""
        return "failed" if self.failed else "stopped" if self.stopped else "done" if self.done else "running"

    @property
    def record_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for r in self.records
                   for t in (r.latents, r.x0, r.noise_uncond, r.noise_cond) if t is not None)

    def save(self, path, **kwargs):
        """Write the image as a PNG with A1111 infotext and sdlab's settings (see sdlab.infotext)."""
        from .infotext import save_png

        return save_png(self, path, **kwargs)

    def infotext(self) -> str:
        from .infotext import format_infotext

        return format_infotext(self)

    def __repr__(self) -> str:
        s = self.settings
        return (f"Run({self.state}, {s.sampler} / {s.schedule}, {len(self.records)} records, NFE {self.nfe}, "
                f"seed {s.seed}, {s.width}x{s.height})")
