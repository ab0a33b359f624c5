"""Instrumented generation: the real diffusers pipeline, watched step by step without changing its result.

``generate(lab, prompt, ...)`` calls ``lab.pipe(...)`` with exactly the arguments a plain call would
get, and observes it through three read-only taps:
- ``callback_on_step_end``: the sample after every UNet call (and the place where Stop interrupts);
- a forward hook on the UNet: the unconditional and conditional noise predictions of each call;
- a wrapper around the run's own scheduler's ``step``: the scheduler's pred_original_sample (x0) where it
  has one; elsewhere x0 is computed from the model output for the model's prediction type.
None of them writes anything back, so the final latents and image equal a plain ``pipe(...)`` call's
bit for bit (tests check it for every catalog sampler). Which user step and noise level each UNet call
belongs to is read from the plan (``plans.plan``), not worked out during the run.

Records are host copies (float16 unless asked otherwise; their size is in the README). On CUDA the copies
go to pinned memory without blocking, and step times come from CUDA events read once at the end, so
recording adds no host-device sync per step; ``record=False`` keeps only the step metadata.

Names are resolved once per run, by ``prepare``: the run's settings then hold the catalog's names for the
sampler and the concrete schedule, and ``run.requested`` the settings as the user gave them.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .errors import BusyError, GenerationError, InvalidArgument, RunTimeout, SdlabError, WrongType  # noqa: F401  (sdlab.generation.BusyError, its first home)
from . import a1111, checks
from . import conventions as C
from . import noise_schedules as S
from . import sampler_catalog as catalog
from .denoiser import guidance_applies
from .notices import notice, said_already, warn
from .previews import DECODERS, TARGETS, Previewer, latent_channels, load_taesd
from .prompts import prompt_problems
from .records import Run, StepEvent, StepRecord, record_tensor
from .settings import ALIASES, OPTION_NAMES, SETTING_NAMES, RunOptions, Settings, split_kwargs

if TYPE_CHECKING:
    from .recipes import Recipe


def native_size(lab) -> int:
    pipe = lab.pipe
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


@dataclass(frozen=True)
class Prepared:
    """Settings checked and completed for one model, with what their names resolved to."""

    settings: Settings  # complete: seed, size, the catalog's sampler name and the concrete schedule
    requested: Settings  # as the user gave them
    sampler: catalog.Sampler | None  # the catalog entry (None for a scheduler that matches none)
    scheduler: Any = None  # a scheduler object the user gave (used as it is, a copy per run)
    recipe: Recipe | None = None  # what the sampler and schedule resolved to (sdlab.recipe_of)
    prompts: Any = None  # sdlab.prompt_encoding.PromptPlan when sdlab encodes the prompts (A1111 syntax), else None
    notes: tuple = ()  # what preparing changed that the run should say (rng='gpu' without a GPU: 'nv')


def prepare(lab, settings: Settings | Prepared, *, scheduler=None) -> Prepared:
    """Check everything before any work, fill in the seed and the size, and resolve the sampler and
    schedule names (once). Errors say what to do. ``scheduler``: a diffusers scheduler to use instead of
    the catalog's; it is recorded in ``settings.scheduler_config`` so that a saved run reproduces."""
    from . import recipes  # (diffusers' scheduler classes: imported with the first run, not with sdlab)

    checks.lab("lab", lab)
    if isinstance(settings, Prepared):
        return settings
    if not isinstance(settings, Settings):
        raise WrongType(f"settings must be sdlab.Settings (or a prompt string, in generate), not "
                        f"{type(settings).__name__} {settings!r:.80}.", argument="settings")
    s = settings
    if s.prompt is None or s.negative_prompt is None:  # diffusers' None: no (negative) prompt
        s = replace(s, prompt=s.prompt or "", negative_prompt=s.negative_prompt or "")
    for name in ("prompt", "negative_prompt"):
        checks.prompt(name, getattr(s, name))
    for name in ("sampler", "schedule"):
        checks.text(name, getattr(s, name))
    T = int(lab.default_scheduler.config.get("num_train_timesteps", 1000))
    steps = checks.whole("steps", s.steps, low=1, high=T, hint=f" The model was trained on {T} timesteps; 20 to 50 steps is typical.")
    eta = None if s.eta is None else checks.number(
        "eta", s.eta, low=0, hint=" 0 is DDIM without noise, 1 ancestral; None keeps the sampler's own.")
    if not isinstance(s.schedule_params, dict) or not all(isinstance(k, str) for k in s.schedule_params):
        raise WrongType(f"schedule_params must be a dict such as {{'rho': 7.0}}, not {s.schedule_params!r}.",
                        argument="schedule_params")
    params = {k: checks.number(f"schedule_params[{k!r}]", v) for k, v in s.schedule_params.items()}
    cfg = checks.number("cfg", s.cfg, low=0, hint=" It is the guidance scale: 7 is typical, 1 turns CFG off.")
    batch = checks.whole("batch_size", s.batch_size, low=1)
    factor = lab.pipe.vae_scale_factor
    size = native_size(lab)
    width = size if s.width is None else checks.whole("width", s.width, hint=_size_hint(s.width, factor, size))
    height = size if s.height is None else checks.whole("height", s.height, hint=_size_hint(s.height, factor, size))
    for name, v in (("width", width), ("height", height)):
        if v < factor or v % factor:
            raise InvalidArgument(f"{name}={v!r} must be a positive multiple of {factor} (the VAE's downsampling)."
                                  f"{_size_hint(v, factor, size)}", argument=name)
    seed = s.seed
    if seed is None:
        seed = secrets.randbelow(2 ** 32)
    else:
        seed = checks.whole("seed", seed, low=0, high=2 ** 63 - 1, hint=" None draws a random one.")
    from . import prompt_encoding as PE

    syntax = checks.choice("prompt_syntax", s.prompt_syntax, PE.SYNTAX,
                           hint=" 'auto' reads A1111's syntax where the prompt has it; 'plain' sends the text as it is.")
    emphasis = PE.emphasis_mode(s.emphasis)
    clip_skip = PE.check_clip_skip(lab, s.clip_skip)
    from . import rng as R

    source = R.source_name(s.rng)
    ensd = checks.whole("ensd", s.ensd, low=0, high=2 ** 62, hint=" It is A1111's Eta noise seed delta (0 for none; "
                        "NovelAI used 31337).")
    subseed = None if s.subseed is None else checks.whole("subseed", s.subseed, low=0, high=2 ** 63 - 1,
                                                          hint=" It is A1111's variation seed (None for none).")
    strength = checks.number("subseed_strength", s.subseed_strength, low=0, high=1,
                             hint=" 0 is the seed's noise, 1 the variation seed's.")
    if strength and subseed is None:
        raise InvalidArgument(f"subseed_strength={strength:g} mixes in a variation seed, but subseed is None: give "
                              "subseed=... too (or strength 0).", argument="subseed")
    resize = R.resize_from("seed_resize_from", s.seed_resize_from)
    notes = ()
    if source == "gpu" and lab.device.type != "cuda":
        source = "nv"
        notes = (f"rng='gpu' (A1111's default random source, torch.randn on the CUDA device) with the model on "
                 f"{lab.device}: the run draws A1111's NV noise instead, the CUDA generator emulated on the CPU (a "
                 "GPU's own noise agrees with it to float32 rounding); its settings say rng='nv'.",)
    s = replace(s, steps=steps, eta=eta, schedule_params=params, cfg=cfg, batch_size=batch, prompt_syntax=syntax,
                emphasis=emphasis, clip_skip=clip_skip, rng=source, ensd=ensd, subseed=subseed,
                subseed_strength=strength, seed_resize_from=resize)
    done = replace(s, width=int(width), height=int(height), seed=int(seed))
    if scheduler is not None and (s.sampler, s.schedule) != (Settings.sampler, Settings.schedule):
        raise InvalidArgument(f"generate got scheduler=... and also sampler={s.sampler!r} / schedule={s.schedule!r}: the "
                         "scheduler decides the sampler and schedule. Pass one or the other.")
    if scheduler is not None:
        checks.scheduler("scheduler", scheduler)
    if s.scheduler_config is not None and not isinstance(s.scheduler_config, dict):
        raise WrongType(f"scheduler_config must be a dict ({{'_class_name': ..., **config}}) or None, not "
                        f"{type(s.scheduler_config).__name__}.", argument="scheduler_config")
    if scheduler is not None or s.scheduler_config is not None:
        scheduler = copy.deepcopy(scheduler) if scheduler is not None else _scheduler_from_config(s.scheduler_config)
        if scheduler.config.get("noise_sampler_seed", 0) is None:
            # DPM++ SDE's Brownian tree unseeded is new noise on every run: seed it with the run's seed, as
            # A1111 does and as sdlab's own DPM++ SDE is (the settings record it, so a saved run reproduces)
            scheduler = type(scheduler).from_config(scheduler.config, noise_sampler_seed=int(seed))
        # the class as it is (sdlab's or diffusers'), and its whole config, recipe included: a saved run rebuilds it
        config = {k: _jsonable(v) for k, v in scheduler.config.items()}
        config["_class_name"] = type(scheduler).__name__
        recipe = recipes.recipe_of(scheduler)  # the settings name what it runs, as for a catalog sampler
        done = replace(done, sampler=recipe.sampler, schedule=recipe.schedule, schedule_params=recipe.schedule_params,
                       scheduler_config=config)
        return _with_prompts(lab, Prepared(settings=done, requested=s, sampler=recipe.entry, scheduler=scheduler,
                                           recipe=recipe), notes)
    spec, concrete = catalog.resolve(s.sampler, s.schedule)  # the one name resolution of a run
    catalog.check_params(spec, concrete, s.schedule_params)
    recipe = recipes.Recipe.of(spec, concrete, family=lab.family, params=s.schedule_params)
    if recipe.has_formula:  # levels a scheduler can step through, or the reason now
        recipe.levels(int(s.steps), S.TrainingSchedule.of(lab))
    return _with_prompts(lab, Prepared(settings=replace(done, sampler=spec.name, schedule=concrete), requested=s,
                                       sampler=spec, recipe=recipe), notes)


def _with_prompts(lab, prepared: Prepared, notes: tuple = ()) -> Prepared:
    """The prepared run with its prompts' plan: None for plain text within the encoder's window (the pipeline
    reads it, as a plain pipe() call does), else A1111's schedule of texts (sdlab.prompt_encoding)."""
    from . import prompt_encoding as PE

    s = prepared.settings
    order = prepared.sampler.order if prepared.sampler is not None else 1
    plan = PE.plan_prompts(lab, s.prompt, s.negative_prompt, steps=s.steps, calls_per_step=order,
                           syntax=s.prompt_syntax, emphasis=s.emphasis, clip_skip=s.clip_skip)
    return replace(prepared, prompts=plan, notes=notes)


def _size_hint(value, factor: int, native: int) -> str:
    """Which sizes near ``value`` work (any value: NaN, inf or a string gives the model's native size)."""
    try:
        lower = max(factor, (int(value) // factor) * factor)
    except (TypeError, ValueError, OverflowError):
        lower = native
    return f" Try {lower} or {lower + factor}."


def prepare_settings(lab, settings: Settings) -> Settings:
    """The settings a run of these would use: checked, seed and size filled in, names resolved."""
    return prepare(lab, settings).settings


validate = prepare_settings  # the name it had first (it also completes the settings)


def _scheduler_from_config(config: dict):
    """A scheduler from a config that came from outside (settings read from a file): checked first
    (``recipes.check_scheduler_config``), and what diffusers still refuses said as one ValueError."""
    from . import recipes

    try:
        recipes.check_scheduler_config(config)
        cls = recipes.scheduler_class(config.get("_class_name"))
    except SdlabError as exc:
        raise InvalidArgument(f"scheduler_config: {exc}") from None
    try:
        return cls.from_config(config)
    except (ValueError, TypeError, KeyError, NotImplementedError, AttributeError) as exc:
        raise InvalidArgument(f"scheduler_config: diffusers could not build {cls.__name__} from it ({exc}). Drop the "
                         "scheduler_config to run the settings' sampler and schedule.") from None


def scheduler_for(lab, prepared: Prepared):
    """The scheduler a prepared run uses: the catalog's, built from the model's own config without
    looking any name up again, or a copy of the user's own."""
    from . import recipes

    if prepared.scheduler is not None:
        return copy.deepcopy(prepared.scheduler)
    s, recipe = prepared.settings, prepared.recipe
    own = S.SCHEDULES[recipe.schedule].params if recipe.schedule in S.SCHEDULES else {}
    options = {k: v for k, v in s.schedule_params.items() if k not in own}  # the scheduler class's options
    # DPM++ SDE's Brownian tree: one per image, seeded with the image's seed, as A1111 seeds it for a batch
    from .rng import image_seeds

    seeds = image_seeds(s.seed, s.batch_size, s.subseed_strength)
    return recipes.build(recipe, lab.default_scheduler.config, seed=seeds[0] if len(seeds) == 1 else seeds, **options)


def pipe_kwargs(lab, settings: Settings, encoded=None, noise: dict | None = None) -> dict:
    """The exact arguments of the plain diffusers call this run stands for. ``encoded``: the prompts as sdlab
    encoded them (``prompt_encoding.encode``), passed as embeddings instead of the text; ``noise``: the
    generator / latents arguments of ``run_noise`` (by default the generators of ``noise_generators``)."""
    kwargs = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
                  guidance_scale=float(settings.cfg), num_inference_steps=int(settings.steps),
                  width=settings.width, height=settings.height, num_images_per_prompt=settings.batch_size,
                  generator=noise_generators(lab, settings))
    if noise is not None:
        kwargs.update(noise)
    if encoded is not None:
        kwargs.update(encoded.pipe_kwargs())
    if settings.eta is not None:
        kwargs["eta"] = float(settings.eta)
    return kwargs


def plain_noise(settings: Settings) -> bool:
    """Whether the pipeline's own draw gives A1111's noise: the CPU source, no ENSD, no variation seed, no
    resize. Then the run passes generators only (one per image, seeded seed + i, as A1111 seeds a batch)."""
    return (settings.rng == "cpu" and not settings.ensd and not settings.subseed_strength
            and settings.seed_resize_from is None)


def noise_generators(lab, settings: Settings):
    """The generator argument of a plain run: one CPU generator per image, seeded seed + i (one for one image)."""
    from .rng import image_seeds

    gens = [lab.generator(s) for s in image_seeds(settings.seed, settings.batch_size, settings.subseed_strength)]
    return gens[0] if len(gens) == 1 else gens


def run_noise(lab, settings: Settings):
    """(the pipeline's noise arguments, the NV per-step source or None) for a prepared run: A1111's starting
    noise drawn by sdlab.rng and passed as ``latents=``, and the generators the sampler's per-step noise comes
    from (re-seeded with ENSD; for NV a marker that sdlab.rng.per_step_noise answers)."""
    from . import rng as R

    if plain_noise(settings):
        return {"generator": noise_generators(lab, settings)}, None
    pipe, s = lab.pipe, settings
    f = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, s.height // f, s.width // f)
    resize = None if s.seed_resize_from is None else (s.seed_resize_from[1] // f, s.seed_resize_from[0] // f)
    subseeds = None if s.subseed is None else R.image_seeds(s.subseed, s.batch_size)
    image_noise = R.ImageNoise(s.rng, R.image_seeds(s.seed, s.batch_size, s.subseed_strength), shape, subseeds,
                               s.subseed_strength, resize, s.ensd)
    latents = image_noise.first().to(device=lab.device, dtype=pipe.text_encoder.dtype)
    if s.rng == "nv":
        marker = torch.Generator("cpu")
        return {"latents": latents, "generator": marker}, (marker, image_noise)
    gens = image_noise.generators  # past the starting noise, or made again with seed + i + ENSD
    return {"latents": latents, "generator": gens[0] if len(gens) == 1 else gens}, None


def initial_noise(lab, settings: Settings) -> torch.Tensor:
    """The unit noise a run of these (prepared) settings starts from, drawn as the pipeline's
    prepare_latents draws it (before it is scaled by the scheduler's init_noise_sigma)."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe = lab.pipe
    if not plain_noise(settings):
        return run_noise(lab, settings)[0]["latents"]
    shape = (settings.batch_size, pipe.unet.config.in_channels, settings.height // pipe.vae_scale_factor,
             settings.width // pipe.vae_scale_factor)
    return randn_tensor(shape, generator=noise_generators(lab, settings), device=lab.device,
                        dtype=pipe.text_encoder.dtype)


def check_options(options: RunOptions) -> RunOptions:
    """How a run is watched, checked before it starts (a bad callback or dtype would otherwise fail mid-run)."""
    if options.preview is not None:
        checks.choice("preview", options.preview, DECODERS, hint=" Or None for no preview.")
    checks.choice("preview_target", options.preview_target, TARGETS, hint=" x0 is the predicted clean image, xt the sample.")
    checks.flag("preview_channels", options.preview_channels)
    checks.flag("record", options.record)
    checks.flag("attention", options.attention)
    checks.function("on_step", options.on_step)
    checks.choice("record_dtype", options.record_dtype, (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                  hint=" float16 keeps records small; float32 for checks by hand.")
    if options.taesd is not None and not isinstance(options.taesd, (str, os.PathLike)):
        raise WrongType(f"taesd must be a local folder with TAESD's weights (or None), not {type(options.taesd).__name__}.",
                        argument="taesd")
    return options


def make_previewer(lab, options: RunOptions) -> Previewer | None:
    if options.preview is None:
        return None
    vae = None
    if options.preview == "vae":
        vae = lab.pipe.vae
    elif options.preview == "taesd":
        vae = load_taesd(lab.family, options.taesd, device=lab.device, dtype=lab.dtype)
    return Previewer(decoder=options.preview, target=options.preview_target, family=lab.family, vae=vae,
                     channels=options.preview_channels)


class _Host:
    """Host copies without a per-step sync: pinned, non-blocking on CUDA; synchronised once at the end."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float16):
        self.cuda = device.type == "cuda"
        self.dtype = dtype

    def __call__(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach()
        if self.cuda:  # cast on the device, then an asynchronous copy into pinned host memory
            dst = torch.empty(t.shape, dtype=self.dtype, pin_memory=True)
            dst.copy_(t.to(self.dtype), non_blocking=True)
            return dst
        return t.to(self.dtype, copy=True)


class _Clock:
    """Wall time of each UNet call without a host-device sync per call: CUDA events on a GPU (read once,
    at the end of the run), perf_counter elsewhere. ``mark()`` at the first call and after every call."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    @property
    def started(self) -> bool:
        return bool(self.marks)

    def mark(self) -> float:
        """Record a mark; the seconds since the previous one (NaN on CUDA until ``finish``)."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
            return float("nan")
        now = time.perf_counter()
        self.marks.append(now)
        return now - self.marks[-2] if len(self.marks) > 1 else 0.0

    def finish(self) -> list[float] | None:
        """Seconds between consecutive marks, for CUDA (one sync); None elsewhere (already known)."""
        if not self.cuda or len(self.marks) < 2:
            return None
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]


def _x0_from_output(scheduler, model_output, sample, timestep, prediction_type: str) -> torch.Tensor:
    """x0 from the (CFG-combined) model output, for schedulers whose step() does not return it.

    Those (DPM-Solver, UniPC, DEIS, PNDM) keep VP-scaled samples x = alpha x0 + sigma_vp eps."""
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)  # called after step(), which moved it on by one
    index = None if index is None else index - 1
    if sigmas is not None and index is not None and 0 <= index < len(sigmas):
        s = float(sigmas[index])
    else:  # (PNDM keeps no sigmas: the level of its training timestep)
        t = int(round(float(timestep)))
        ab = float(scheduler.alphas_cumprod[min(max(t, 0), len(scheduler.alphas_cumprod) - 1)])
        s = float(S.sigma_from_alpha_bar(ab))
    return C.x0_from_prediction(prediction_type, model_output.float(), C.vp_to_ve(sample.float(), s), s)


class _Tap:
    """The read-only taps on one run of the pipeline: hooks, records, previews."""

    def __init__(self, lab, run: Run, scheduler, options: RunOptions, previewer: Previewer | None,
                 stop: threading.Event, encoded=None):
        self.lab, self.run, self.scheduler, self.options = lab, run, scheduler, options
        self.encoded = encoded  # prompt_encoding.Encoded: the prompts sdlab encoded (A1111 syntax), else None
        self.recorder = None  # attention.AttentionRecorder when the run records cross-attention maps
        self.previewer, self.stop = previewer, stop
        self.host = _Host(lab.device, options.record_dtype)
        self.clock = _Clock(lab.device)
        self.noise: tuple | None = None
        self.x0: torch.Tensor | None = None
        self.last_latents: torch.Tensor | None = None
        self.cfg_on = guidance_applies(lab.pipe, run.settings.cfg)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.wants_x0 = options.record or (previewer is not None and previewer.target == "x0")
        self._handles: list = []
        self._finite: list[torch.Tensor] = []  # per call, on the device: no host sync during the run

    # -- installation -------------------------------------------------------------------------
    def __enter__(self):
        unet = self.lab.pipe.unet
        self._handles = [unet.register_forward_hook(self._unet_hook),
                         unet.register_forward_pre_hook(self._first_unet_call)]
        original = type(self.scheduler).step
        tap = self

        def step(model_output, timestep, sample, *args, return_dict=True, **kwargs):
            out = original(tap.scheduler, model_output, timestep, sample, *args, return_dict=True, **kwargs)
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None and tap.wants_x0:
                x0 = _x0_from_output(tap.scheduler, model_output, sample, timestep, tap.prediction_type)
            tap.x0 = x0
            return out if return_dict else out.to_tuple()

        # The pipeline passes generator= and eta= only to a step() whose signature names them: keep it.
        step.__signature__ = inspect.signature(self.scheduler.step)
        self.scheduler.step = step  # an instance attribute: removed again in __exit__
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self.scheduler.__dict__.pop("step", None)

    # -- taps ----------------------------------------------------------------------------------
    def _first_unet_call(self, module, args):
        if not self.clock.started:
            self.clock.mark()

    def _unet_hook(self, module, args, output):
        pred = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if self.options.record:
            if self.cfg_on:
                uncond, cond = pred.chunk(2)
                self.noise = (self.host(uncond), self.host(cond))
            else:
                self.noise = (None, self.host(pred))

    def callback(self, pipe, i, t, kwargs):
        latents = kwargs["latents"]
        self.last_latents = latents
        self._finite.append(torch.isfinite(latents).all())
        run, plan, record = self.run, self.run.plan, self.options.record
        seconds = self.clock.mark()
        sigma = float(plan.sigma_after_call[i]) if i < plan.nfe else float("nan")
        sigma = None if math.isnan(sigma) else sigma
        noise = self.noise or (None, None)
        # the timestep from the host-side plan: float(t) of a CUDA tensor would be a sync per step
        timestep = float(plan.timesteps[i]) if i < plan.nfe else float(t)
        rec = StepRecord(index=i, step=int(plan.step_of_call[min(i, plan.nfe - 1)]), total_steps=run.settings.steps,
                         timestep=timestep, sigma=sigma, nfe=i + 1,
                         latents=self.host(latents) if record else None, x0=self.host(self.x0) if record else None,
                         noise_uncond=noise[0], noise_cond=noise[1], seconds=seconds,
                         xt_scale=C.xt_scale(sigma, plan.variance_exploding), family=run.family,
                         prompt=run.settings.prompt, negative_prompt=run.settings.negative_prompt)
        switch = None
        if self.encoded is not None:
            rec.prompt, rec.negative_prompt = self.encoded.plan.texts_at(i)
            if self.encoded.plan.edits and i + 1 < plan.nfe and self.encoded.entries(i + 1) != self.encoded.entries(i):
                switch = self._embeds(pipe, i + 1)  # prompt editing: the next call's conditioning
        if not self.cfg_on:  # without guidance the negative prompt conditions nothing
            rec.negative_prompt = None
        run.records.append(rec)
        if self.recorder is not None:
            run.attention.calls.append(self.recorder.take())
            run.attention.step_of_call.append(rec.step)
        preview = channels = None
        if self.previewer is not None:
            src = record_tensor(self.previewer.target, self.x0, latents, rec.xt_scale)
            if src is None:  # no x0 from this scheduler at this call: show the sample
                src = record_tensor("xt", None, latents, rec.xt_scale)
            preview = self.previewer(src, last_step=i == plan.nfe - 1)
            if preview is not None:
                run.preview = preview
                if self.previewer.channels:
                    channels = latent_channels(src)
        if self.options.on_step is not None:
            self.options.on_step(StepEvent(run, rec, preview, channels))
        if self.stop.is_set():
            pipe._interrupt = True  # diffusers skips the remaining iterations, then decodes (PR 5867)
        return switch or {}

    def _embeds(self, pipe, call: int) -> dict:
        """The conditioning of UNet call ``call`` in the form the pipeline keeps it during its loop (one row per
        image, negative rows first under CFG): what callback_on_step_end returns to switch prompts."""
        pos, neg = self.encoded.at(call)
        b = self.run.settings.batch_size
        cfg = pipe.do_classifier_free_guidance

        def rows(t):
            return t.repeat(b, *([1] * (t.dim() - 1)))

        out = {"prompt_embeds": torch.cat([rows(neg.embeds), rows(pos.embeds)]) if cfg else rows(pos.embeds)}
        if pos.pooled is not None:  # SDXL: the pooled embedding is conditioning too (added_cond_kwargs text_embeds)
            out["add_text_embeds"] = torch.cat([rows(neg.pooled), rows(pos.pooled)]) if cfg else rows(pos.pooled)
        return out

    def first_non_finite(self) -> int | None:
        """The first UNet call after which the latents held NaN/inf (None if none did): one transfer."""
        if not self._finite:
            return None
        bad = (~torch.stack(self._finite)).nonzero()
        return int(bad[0]) if len(bad) else None

    def finish(self):
        """Step times from the CUDA events (one sync, at the end of the run)."""
        times = self.clock.finish()
        if times is not None:
            for rec, seconds in zip(self.run.records, times):
                rec.seconds = seconds


def generate(lab, prompt: str | Settings | Prepared | None = None, *, stop: threading.Event | None = None,
             scheduler=None, queue: bool = False, _started: Callable[[Run], Any] | None = None, **kwargs) -> Run:
    """Run the pipeline, recording every step. The arguments are :class:`~sdlab.settings.Settings`
    fields (diffusers' names guidance_scale, num_inference_steps, num_images_per_prompt work too) and
    :class:`~sdlab.settings.RunOptions` fields:

    preview: None, "approx", "taesd" or "vae"; preview_target "x0" (predicted clean image) or "xt";
      preview_channels: also hand on_step the 4 latent channels of each previewed step.
    record / record_dtype: keep the per-call tensors, and in which dtype (float16 by default).
    scheduler: a diffusers scheduler to use as it is (a copy of it), instead of the catalog's sampler and
      schedule: for experiments such as DDIM with a bad config. Its class and config go into the run's
      settings (``scheduler_config``), so a saved PNG reproduces the run.
    on_step: called with a StepEvent after every UNet call (in the thread that runs the pipeline). On CUDA
      the record tensors are copied asynchronously and complete when the run ends; during the run read
      ``event.preview``, which is already on the host.
    queue: while another run is going on this model, wait for it to end (runs from several threads then
      take turns) instead of raising BusyError.
    """
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise WrongType(f"stop must be a threading.Event (set it to end the run), not {type(stop).__name__}.",
                        argument="stop")
    checks.flag("queue", queue)
    prepared, options = _parse(lab, prompt, kwargs, scheduler)
    return _run(lab, prepared, options, make_previewer(lab, options), stop or threading.Event(), _started,
                queue=queue)


def _parse(lab, prompt, kwargs: dict, scheduler) -> tuple[Prepared, RunOptions]:
    """generate()'s arguments as a prepared run and its options; everything checked, nothing started."""
    if not (prompt is None or isinstance(prompt, (str, Settings, Prepared))):
        raise WrongType(f"prompt must be a string (or sdlab.Settings), not {type(prompt).__name__} {prompt!r:.60}.",
                        argument="prompt")
    settings, options, rest = split_kwargs(None if isinstance(prompt, Prepared) else prompt, kwargs)
    if isinstance(prompt, Prepared) and (set(kwargs) - set(rest) - OPTION_NAMES or scheduler is not None):
        raise WrongType("A prepared run's settings are fixed; prepare new settings to change them.")
    _refuse_unknown(rest)
    check_options(options)
    prepared = prepare(lab, prompt if isinstance(prompt, Prepared) else settings, scheduler=scheduler)
    check_fits(lab, prepared.settings, options)
    return prepared, options


# Working memory of a run beyond the weights, per output pixel: the VAE decoder's full-resolution blocks hold
# block_out_channels[0] channels (128 in SD's AutoencoderKL: up_blocks[-1], then conv_out) and about 6 such
# tensors at once; the toy's decoder works on 3 channels in float64.
_DECODE_TENSORS = 6
_TOY_DECODE_BYTES_PER_PIXEL = 3 * 8 * 3


def run_bytes(lab, settings: Settings, options: RunOptions) -> int:
    """About how much memory a run of these settings needs besides the model: the records it keeps (4
    tensors a UNet call, at most two calls a step, plus PLMS's warm-up), the decode and the images."""
    from .toy import is_teaching_model

    pipe = lab.pipe
    b, h, w = int(settings.batch_size), int(settings.height), int(settings.width)
    f = pipe.vae_scale_factor
    latent = b * pipe.unet.config.in_channels * (h // f) * (w // f)
    element = torch.finfo(lab.dtype).bits // 8
    calls = 2 * int(settings.steps) + 1
    records = calls * 4 * latent * (torch.finfo(options.record_dtype).bits // 8) if options.record else 0
    channels = (getattr(pipe.vae.config, "block_out_channels", None) or (128,))[0]
    per_pixel = _TOY_DECODE_BYTES_PER_PIXEL if is_teaching_model(lab) else _DECODE_TENSORS * channels * element
    images = b * h * w * (3 * 4 + 3)  # the pipeline's float32 array, then the PIL images
    toy = 0
    if is_teaching_model(lab):  # its exact denoiser holds its pictures at the run's latent size
        from .toy.data import memory_bytes

        toy = memory_bytes(h // f, w // f)
    return records + b * h * w * per_pixel + images + 16 * latent * element + toy


def check_fits(lab, settings: Settings, options: RunOptions) -> None:
    """Refuse, before anything is allocated, a run that cannot fit in the memory free on the model's device,
    naming the size and the largest that fits."""
    from .devices import free_memory_bytes, gib

    need = run_bytes(lab, settings, options)
    free = free_memory_bytes(lab.device)
    if free is None or need <= free:
        return
    f = lab.pipe.vae_scale_factor
    b, h, w = settings.batch_size, settings.height, settings.width
    side = int(math.sqrt(h * w * free / need) // f * f)
    batch = int(b * free / need)
    hint = (f"at batch {b} the largest square that fits is about {side}x{side}" if side >= f else
            "no size fits at this batch") + (f"; at {w}x{h}, a batch of {batch}" if batch >= 1 else "")
    raise GenerationError(
        f"batch_size={b} image(s) at width={w}, height={h} need about {gib(need)} of working memory ({'records, ' if options.record else ''}"
        f"decoding and images), and {gib(free)} is free on {lab.device}: {hint}. "
        f"{'record=False keeps only the step metadata. ' if options.record else ''}Nothing was started.")


def _refuse_unknown(rest: dict) -> None:
    if rest:
        raise WrongType(f"Unknown argument(s) {sorted(rest)}. Settings: {', '.join(sorted(SETTING_NAMES))} "
                        f"(aliases: {', '.join(sorted(ALIASES))}); options: {', '.join(sorted(OPTION_NAMES))}, "
                        "scheduler, stop.")


_BUSY = ("A run is already going on this model. Stop it (job.stop()) or wait for it (job.wait()) before "
         "starting another; runs on one pipeline are not queued.")


def _run(lab, prepared: Prepared, options: RunOptions, previewer: Previewer | None, stop: threading.Event,
         started: Callable[[Run], Any] | None = None, *, locked: bool = False, queue: bool = False) -> Run:
    """One run. ``locked``: the caller already holds ``lab._lock`` for it (generate_async takes it in the
    caller's thread, so that two callers cannot both pass the check); it is released here either way.
    ``queue``: wait for the lock instead of raising BusyError."""
    from . import plans

    settings = prepared.settings
    if not locked and not lab._lock.acquire(blocking=queue):
        raise BusyError(_BUSY)
    try:
        scheduler = scheduler_for(lab, prepared)
        plan = plans.plan(scheduler, settings.steps)
        report = {"sampler": plan.recipe.sampler, "schedule": plan.recipe.schedule, "via": plan.recipe.via,
                  "class": type(scheduler).__name__,
                  "changes": {k: [_jsonable(a), _jsonable(b)] for k, (a, b) in
                              plans.config_changes(scheduler, lab.default_scheduler).items()}}
        run = Run(settings=settings, model=lab.source, family=lab.family, device=str(lab.device),
                  dtype=str(lab.dtype).removeprefix("torch."), plan=plan,
                  scheduler_report=report, requested=prepared.requested,
                  threads=torch.get_num_threads() if lab.device.type == "cpu" else None)
        # what will differ from the tool whose names the user typed (the plan's notes) or whose infotext
        # is regenerated, and prompt words the model cannot read: said before the first step, kept with the run
        prompts = prepared.prompts
        for problem in (*prepared.notes, *run.plan.notes, *a1111.differences(settings, prepared.sampler, lab.source),
                        *prompt_problems(lab, settings.prompt, settings.negative_prompt, prompts),
                        *(prompts.notes if prompts is not None else ()), *_size_notes(lab, settings)):
            run.problems.append(problem)
            run.notices.append(problem)
            notice(f"sdlab: {problem}", stacklevel=4)
        if started is not None:
            started(run)
        pipe = lab.pipe
        installed = pipe.scheduler  # what the user set (set_sampler, or by hand): back after the run
        t0 = time.perf_counter()
        encoded = None
        if prompts is not None:  # A1111's conditioning, encoded before the loop with the model's text encoders
            from .prompt_encoding import encode

            encoded = encode(lab, prompts)
            run.prompt_plan = prompts
            run.prompt_chunks = encoded.prompt[0].chunks
            run.padded_conds = encoded.padded
            for problem in a1111.padding_difference(settings, encoded.padded):
                run.problems.append(problem)
                run.notices.append(problem)
                notice(f"sdlab: {problem}", stacklevel=4)
        noise_kwargs, nv = run_noise(lab, settings)
        recorder = _attention_recorder(lab, run, settings, options, encoded)
        pipe.scheduler = scheduler
        tap = _Tap(lab, run, scheduler, options, previewer, stop, encoded)
        tap.recorder = recorder
        try:
            said_already.depth += 1  # (the prompt's truncation was said above: diffusers' own line is dropped)
            from .rng import per_step_noise

            with tap, torch.inference_mode(), (per_step_noise(scheduler, *nv) if nv else contextlib.nullcontext()), \
                    (recorder if recorder is not None else contextlib.nullcontext()):
                out = pipe(**pipe_kwargs(lab, settings, encoded, noise_kwargs), output_type="np",
                           callback_on_step_end=tap.callback, callback_on_step_end_tensor_inputs=["latents"])
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not isinstance(exc, torch.OutOfMemoryError) \
                    and "can't allocate memory" not in str(exc):  # torch's CPU allocator says it so
                _keep_partial(run, tap, exc)
                raise
            tap.last_latents = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            error = GenerationError(
                f"Out of memory generating {settings.batch_size} image(s) at {settings.width}x{settings.height} "
                f"on {lab.device}. Try a smaller size or batch, preview='approx', "
                "lab.pipe.enable_attention_slicing(), or lab.pipe.enable_model_cpu_offload(). "
                "The model is still loaded and ready.")
            _keep_partial(run, tap, error)
            raise error from exc
        except BaseException as exc:  # on_step raised, or the kernel was interrupted: keep what was made
            _keep_partial(run, tap, exc)
            raise
        finally:
            said_already.depth -= 1
            pipe._interrupt = False
            pipe.scheduler = installed
        tap.finish()
        run.stopped = stop.is_set() and len(run.records) < run.plan.nfe
        run.final_latents = tap.last_latents.detach().float().cpu() if tap.last_latents is not None else None
        images = out.images
        with np.errstate(invalid="ignore"):  # NaN pixels (VAE overflow) are reported below, by _check_finite
            run.images = pipe.image_processor.numpy_to_pil(images)
        run.nsfw = getattr(out, "nsfw_content_detected", None)
        run.seconds = time.perf_counter() - t0
        _check_finite(run, images, tap.first_non_finite(), tap.prediction_type)
        return run
    finally:
        lab._lock.release()


def _attention_recorder(lab, run: Run, settings: Settings, options: RunOptions, encoded):
    """The run's cross-attention recorder (and its empty maps on the run), or None when not asked for."""
    if not options.attention:
        return None
    from .attention import AttentionMaps, AttentionRecorder, cross_attention_layers, prompt_tokens
    from .errors import NotSupported

    pipe = lab.pipe
    if not cross_attention_layers(pipe.unet):
        raise NotSupported("attention=True: this model's UNet has no cross-attention layers (the teaching model "
                           "computes its denoiser exactly, without attention); look at word influence instead.",
                           argument="attention")
    if encoded is not None and len({t for _, t in encoded.plan.prompt}) > 1:
        raise NotSupported("attention=True with prompt editing or alternation: the prompt's tokens change during "
                           "the run, so one list of words cannot name the maps. Record the texts one at a time "
                           "(e.g. with sdlab.prompt_schedule to list them).", argument="attention")
    if encoded is not None:  # the prompt's own tokens across its chunks
        from .prompt_encoding import chunks, _pieces

        cut = chunks(pipe.tokenizer, _pieces(encoded.plan.prompt[0][1], encoded.plan.emphasis))
        ids = [i for c in cut for i in c.ids]
        weights = [w for c in cut for w in c.weights]
        pad = encoded.prompt[0].embeds.shape[1] - len(ids)
        ids, weights = ids + [pipe.tokenizer.pad_token_id] * pad, weights + [1.0] * pad
    else:
        ids = pipe.tokenizer(settings.prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True).input_ids
        weights = None
    words, positions, weights = prompt_tokens(pipe.tokenizer, ids, weights)
    run.attention = AttentionMaps(tokens=words, positions=positions, weights=weights)
    f = pipe.vae_scale_factor
    return AttentionRecorder(pipe.unet, positions, settings.height // f, settings.width // f,
                             guidance_applies(pipe, settings.cfg), settings.batch_size)


def _size_notes(lab, settings: Settings) -> list[str]:
    from .toy import is_teaching_model, size_note

    note = size_note(settings.width, settings.height) if is_teaching_model(lab) else None
    return [note] if note else []


def _keep_partial(run: Run, tap: "_Tap", error: BaseException) -> None:
    """A run that ended with an exception stays inspectable: its records, its last latents, marked failed,
    and reachable from the exception as ``error.run``."""
    run.error = error
    if tap.last_latents is not None:
        run.final_latents = tap.last_latents.detach().float().cpu()
    try:
        error.run = run
    except AttributeError:  # an exception type that takes no attributes
        pass


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _check_finite(run: Run, images: np.ndarray, first_bad_call: int | None = None,
                  prediction_type: str = "epsilon") -> None:
    """Say where NaN/inf appeared, with advice that fits the run's dtype."""
    problem = None
    half = run.dtype in ("float16", "bfloat16")
    if run.final_latents is not None and not torch.isfinite(run.final_latents).all():
        where = ""
        if first_bad_call is not None and first_bad_call < len(run.records):
            rec = run.records[first_bad_call]
            where = f" from step {rec.step} of {run.settings.steps} (UNet call {first_bad_call + 1}, sigma {rec.sigma})"
        if half:
            advice = (f"the UNet overflowed in {run.dtype}: load the model with dtype='float32', or lower cfg "
                      f"(now {run.settings.cfg:g}).")
        else:
            advice = (f"in float32 this is not an overflow of half precision: check the model's weights and its "
                      f"scheduler config (prediction_type is {prediction_type!r}; SD 2.x 768 px models need "
                      f"'v_prediction'), the sampler (try 'Euler' or 'DPM++ 2M'), and lower cfg (now {run.settings.cfg:g}).")
        problem = f"The latents became NaN/inf{where}: {advice}"
    elif not np.isfinite(images).all():  # (an all-black image can be legitimate: the safety checker's)
        if half:
            problem = ("The decoded image contains NaN/inf (black picture): the VAE overflowed in "
                       f"{run.dtype}. Decode in float32: lab.pipe.vae.to(torch.float32) or load with "
                       "dtype='float32'; for SDXL use an fp16-fixed VAE (madebyollin/sdxl-vae-fp16-fix).")
        else:
            problem = ("The decoded image contains NaN/inf (black picture) though the latents are finite and the "
                       "VAE runs in float32: the VAE's weights are likely broken; load another VAE "
                       "(diffusers.AutoencoderKL.from_pretrained(...), then lab.pipe.vae = vae).")
    if problem is not None:
        run.problems.append(problem)
        warn(f"sdlab: {problem}", stacklevel=4)


class Job:
    """A run in a worker thread. ``stop()`` ends it within one step; ``wait()`` returns the run or
    re-raises the worker's exception; ``run`` is the run so far (marked failed if it raised).

    ``done`` becomes true only after ``on_done`` has returned, so whoever checks ``job.done`` to decide
    whether a new run may start never sees a finished job whose callback is still updating a view."""

    def __init__(self, lab, prepared: Prepared, options: RunOptions = RunOptions(), previewer: Previewer | None = None,
                 on_done: Callable[["Job"], Any] | None = None, *, locked: bool = False):
        self._on_done = on_done
        self._locked = locked
        self._stop = threading.Event()
        self._ended = threading.Event()  # the run is over: result or error set (wait() returns)
        self._done = threading.Event()  # ... and on_done has returned
        self._run: Run | None = None
        self._result: Run | None = None
        self._error: BaseException | None = None
        self.callback_error: BaseException | None = None  # what on_done raised, if anything
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(lab, prepared, options, previewer), daemon=True,
                                       name="sdlab-generate")

    def _work(self, lab, prepared, options, previewer):
        def started(run):
            self._run = run
            self._started.set()

        try:
            self._result = _run(lab, prepared, options, previewer, self._stop, started, locked=self._locked)
        except BaseException as exc:  # handed to wait(); never lost
            self._error = exc
        finally:
            self._started.set()
            self._ended.set()
            try:
                if self._on_done is not None:
                    self._on_done(self)  # in the worker thread, after the run is complete
            except BaseException as exc:  # a view's bug must not leave the job running forever
                self.callback_error = exc
            finally:
                self._done.set()

    def start(self) -> "Job":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def run(self) -> Run | None:
        return self._result or self._run

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None = None) -> Run:
        """The run, once it has ended (``timeout`` seconds at most; None waits as long as it takes)."""
        if timeout is not None:
            timeout = checks.number("timeout", timeout, low=0, high=threading.TIMEOUT_MAX, hint=" It is in seconds; None waits until the run ends.")
        if not self._ended.wait(timeout):
            raise RunTimeout(f"The run is still going after timeout={timeout} s; call job.stop() to end it.",
                             argument="timeout")
        if self._error is not None:
            raise self._error
        return self._result

    def __repr__(self) -> str:
        state = "done" if self._ended.is_set() else ("stopping" if self._stop.is_set() else "running")
        return f"Job({state}, {self.run!r})"


def generate_async(lab, prompt: str | Settings | Prepared | None = None, *, scheduler=None, on_done=None,
                   **kwargs) -> Job:
    """Start :func:`generate` in a worker thread and return its :class:`Job` at once. ``on_done(job)`` is
    called in the worker when the run has ended (done, stopped or failed).

    Bad settings and options, and a second run on a model whose run is still going (BusyError), raise
    here, in the caller's thread, before any thread starts. Runs are refused, not queued."""
    checks.function("on_done", on_done)
    prepared, options = _parse(lab, prompt, kwargs, scheduler)
    previewer = make_previewer(lab, options)
    # taken here, in the caller's thread, and handed to the worker: checking and taking in one step means
    # two threads calling at once cannot both start (one gets BusyError now, not a failure at wait())
    if not lab._lock.acquire(blocking=False):
        raise BusyError(_BUSY)
    try:
        job = Job(lab, prepared, options, previewer, on_done=on_done, locked=True)
        job.thread.start()
    except BaseException:
        lab._lock.release()
        raise
    job._started.wait()
    return job
