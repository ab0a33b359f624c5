"""Instrumented generation: the real diffusers pipeline, watched step by step without changing its result.

``generate(lab, prompt, ...)`` calls ``lab.pipe(...)`` with exactly the arguments a plain call would
get, and observes it through three read-only taps:
- ``callback_on_step_end``: the latents x_t after every step (and the place where Stop interrupts);
- a forward hook on the UNet: the unconditional and conditional noise predictions of each call;
- a wrapper around the run's own scheduler's ``step``: the scheduler's pred_original_sample (x0) where it
  has one; elsewhere x0 is computed from the model output for the model's prediction type.
None of them writes anything back, so the final latents and image equal a plain ``pipe(...)`` call's
bit for bit (tests check it for every catalog sampler).

Records are copied to the host as float16 (4 tensors of B x 4 x h/8 x w/8 per step: 128 KiB per step for
one 512 px image, 6.4 MiB for 50 steps). On CUDA the copies go to pinned memory without blocking, and
step times come from CUDA events, so recording adds no host-device sync per step; ``record=False``
keeps only the step metadata.
"""
from __future__ import annotations

import copy
import gc
import inspect
import math
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

import numpy as np
import torch

from . import noise_schedules as S
from .notices import notice, warn
from .previews import Previewer, latent_channels, load_taesd
from .prompts import prompt_problems
from .sampler_catalog import Plan, effective_config, is_variance_exploding, make_scheduler, plan, resolve

ALIASES = {"guidance_scale": "cfg", "cfg_scale": "cfg", "num_inference_steps": "steps",
           "num_images_per_prompt": "batch_size", "schedule_type": "schedule"}


class GenerationError(RuntimeError):
    """A run failed; the message says what to do. The pipeline stays usable."""


class BusyError(RuntimeError):
    """A run is already going on this model."""


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
    extra: dict = field(default_factory=dict)  # fields read from an infotext that sdlab does not use

    @classmethod
    def from_kwargs(cls, **kwargs) -> "Settings":
        return cls().updated(**kwargs)

    def updated(self, **kwargs) -> "Settings":
        """A copy with some fields changed; diffusers' / A1111's names are accepted as aliases."""
        names = {f.name for f in fields(self)}
        clean = {}
        for key, value in kwargs.items():
            key = ALIASES.get(key, key)
            if key not in names:
                raise TypeError(f"Unknown setting {key!r}. Settings: {', '.join(sorted(names))} "
                                f"(aliases: {', '.join(sorted(ALIASES))}).")
            clean[key] = value
        return replace(self, **clean)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepRecord:
    """One scheduler step (one pipeline loop iteration; Heun-type samplers take two per user step)."""

    index: int  # loop iteration, 0-based
    step: int  # user steps completed after this iteration, 1..steps
    steps: int  # N, the user's step count
    timestep: float
    sigma: float | None  # noise level after this iteration (None where the scheduler has no sigmas)
    nfe: int  # UNet calls so far
    latents: torch.Tensor | None  # x_t after the step (host, float16)
    x0: torch.Tensor | None  # predicted clean latents (host, float16)
    noise_uncond: torch.Tensor | None  # unconditional noise prediction (None without CFG)
    noise_cond: torch.Tensor | None  # conditional noise prediction
    seconds: float = float("nan")  # wall time of this iteration
    xt_scale: float = 1.0  # multiply latents by this for a VP-scaled x_t (Euler-type samplers carry x0 + sigma*eps)


@dataclass
class StepEvent:
    """What ``on_step`` and the widgets receive after every step."""

    run: "Run"
    record: StepRecord
    preview: np.ndarray | None  # HxWx3 uint8, or None when this step was not previewed
    channels: np.ndarray | None = None  # (4, h, w) uint8 latent channels of the previewed tensor, with the preview


@dataclass
class Run:
    """The result of one generation, complete or stopped."""

    settings: Settings
    model: str
    family: str
    device: str
    dtype: str
    plan: Plan
    scheduler_report: dict = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    images: list = field(default_factory=list)
    final_latents: torch.Tensor | None = None
    stopped: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    nsfw: list | None = None
    preview: np.ndarray | None = None

    @property
    def image(self):
        return self.images[0] if self.images else None

    @property
    def nfe(self) -> int:
        return self.steps[-1].nfe if self.steps else 0

    @property
    def done(self) -> bool:
        return bool(self.images)

    @property
    def record_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for r in self.steps
                   for t in (r.latents, r.x0, r.noise_uncond, r.noise_cond) if t is not None)

    def save(self, path, **kwargs):
        from .infotext import save_png

        return save_png(self, path, **kwargs)

    def infotext(self) -> str:
        from .infotext import format_infotext

        return format_infotext(self)

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else ("done" if self.done else "running")
        s = self.settings
        return (f"Run({state}, {s.sampler} / {self.scheduler_report.get('schedule', s.schedule)}, "
                f"{len(self.steps)} records, NFE {self.nfe}, seed {s.seed}, {s.width}x{s.height})")


def native_size(lab) -> int:
    pipe = lab.pipe
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def validate(lab, settings: Settings, *, catalog: bool = True) -> Settings:
    """Check everything before any work; fill in the seed and size. Errors say what to do."""
    s = settings
    if not isinstance(s.prompt, str) or not isinstance(s.negative_prompt, str):
        raise TypeError("prompt and negative_prompt must be strings.")
    if isinstance(s.steps, bool) or not isinstance(s.steps, (int, np.integer)) or s.steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, not {s.steps!r}.")
    if not isinstance(s.cfg, (int, float)) or not math.isfinite(s.cfg) or s.cfg < 0:
        raise ValueError(f"cfg (guidance scale) must be a finite number >= 0, not {s.cfg!r}; 7 is typical, 1 turns CFG off.")
    if not isinstance(s.batch_size, (int, np.integer)) or s.batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, not {s.batch_size!r}.")
    factor = lab.pipe.vae_scale_factor
    size = native_size(lab)
    width = size if s.width is None else s.width
    height = size if s.height is None else s.height
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or v < factor or v % factor:
            lower = max(factor, (int(v) // factor) * factor) if isinstance(v, (int, float)) else size
            raise ValueError(f"{name}={v!r} must be a positive multiple of {factor} (the VAE's downsampling); "
                             f"try {lower} or {lower + factor}.")
    seed = s.seed
    if seed is None:
        seed = secrets.randbelow(2 ** 32)
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be a whole number from 0 to 2**63-1 (or None for a random one), not {seed!r}.")
    if catalog:
        resolve(s.sampler, s.schedule)  # unknown names and impossible combinations raise here
    return replace(s, width=int(width), height=int(height), seed=int(seed))


def pipe_kwargs(lab, settings: Settings) -> dict:
    """The exact arguments of the plain diffusers call this run stands for."""
    kwargs = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
                  guidance_scale=float(settings.cfg), num_inference_steps=int(settings.steps),
                  width=settings.width, height=settings.height, num_images_per_prompt=settings.batch_size,
                  generator=lab.generator(settings.seed))
    if settings.eta is not None:
        kwargs["eta"] = float(settings.eta)
    return kwargs


def initial_noise(lab, settings: Settings) -> torch.Tensor:
    """The unit noise a run of these (validated) settings starts from, drawn as the pipeline's
    prepare_latents draws it (before it is scaled by the scheduler's init_noise_sigma)."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe = lab.pipe
    shape = (settings.batch_size, pipe.unet.config.in_channels, settings.height // pipe.vae_scale_factor,
             settings.width // pipe.vae_scale_factor)
    return randn_tensor(shape, generator=lab.generator(settings.seed), device=lab.device, dtype=pipe.text_encoder.dtype)


def scheduler_for(lab, settings: Settings):
    return make_scheduler(lab, settings.sampler, settings.schedule, **settings.schedule_params)


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


def _x0_from_output(scheduler, model_output, sample, timestep, prediction_type: str) -> torch.Tensor:
    """x0 from the (CFG-combined) model output, for schedulers whose step() does not return it.

    Those (DPM-Solver, UniPC, DEIS, PNDM) keep VP-scaled samples x = alpha x0 + sigma_vp eps."""
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)  # called after step(), which moved it on by one
    index = None if index is None else index - 1
    if sigmas is not None and index is not None and 0 <= index < len(sigmas):
        s = float(sigmas[index])  # VE sigma -> VP alpha, sigma
        alpha, sigma_vp = 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)
    else:
        t = int(round(float(timestep)))
        ab = float(scheduler.alphas_cumprod[min(max(t, 0), len(scheduler.alphas_cumprod) - 1)])
        alpha, sigma_vp = math.sqrt(ab), math.sqrt(1 - ab)
    x, out = sample.float(), model_output.float()
    if prediction_type == "epsilon":
        return (x - sigma_vp * out) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma_vp * out
    return out  # "sample"


class _Tap:
    """The three read-only taps on one run of the pipeline."""

    def __init__(self, lab, settings: Settings, run: Run, scheduler, previewer: Previewer | None,
                 on_step: Callable[[StepEvent], Any] | None, stop: threading.Event, record: bool,
                 record_dtype: torch.dtype = torch.float16):
        self.lab, self.settings, self.run, self.scheduler = lab, settings, run, scheduler
        self.previewer, self.on_step, self.stop, self.record = previewer, on_step, stop, record
        self.host = _Host(lab.device, record_dtype)
        self.nfe = 0
        self.noise: tuple | None = None
        self.x0: torch.Tensor | None = None
        self.last_latents: torch.Tensor | None = None
        self.cfg_on = settings.cfg > 1 and lab.pipe.unet.config.get("time_cond_proj_dim") is None
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.ve = is_variance_exploding(scheduler)
        self.levels = list(run.plan.sigmas)
        self.cuda_events: list = []
        self.t_last = None
        self._handles: list = []

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
            wants_x0 = tap.record or (tap.previewer is not None and tap.previewer.target == "x0")
            if x0 is None and wants_x0:
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
    def _unet_hook(self, module, args, output):
        self.nfe += 1
        pred = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if self.record:
            if self.cfg_on:
                uncond, cond = pred.chunk(2)
                self.noise = (self.host(uncond), self.host(cond))
            else:
                self.noise = (None, self.host(pred))

    def callback(self, pipe, i, t, kwargs):
        latents = kwargs["latents"]
        self.last_latents = latents
        sched = self.scheduler
        index = getattr(sched, "step_index", None)
        sig = getattr(sched, "sigmas", None)
        sigma = float(sig[index]) if sig is not None and index is not None and index < len(sig) else None
        step = self._user_step(i)
        now = time.perf_counter()
        if self.lab.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.cuda_events.append(ev)
            seconds = float("nan")  # filled in from the events when the run ends
        else:
            seconds = now - (self.t_last or now)
        self.t_last = now
        if sigma is None and step <= len(self.levels) - 1:
            sigma = float(self.levels[step])
        noise = self.noise or (None, None)
        # the timestep from the host-side plan: float(t) of a CUDA tensor would be a sync per step
        ts = self.run.plan.timesteps
        timestep = float(ts[i]) if i < len(ts) else float(t)
        rec = StepRecord(index=i, step=step, steps=self.settings.steps, timestep=timestep, sigma=sigma, nfe=self.nfe,
                         latents=self.host(latents) if self.record else None,
                         x0=self.host(self.x0) if self.record else None,
                         noise_uncond=noise[0], noise_cond=noise[1], seconds=seconds,
                         xt_scale=float(S.vp_scale(sigma)) if self.ve and sigma is not None else 1.0)
        self.run.steps.append(rec)
        preview = channels = None
        if self.previewer is not None:
            last = i == len(sched.timesteps) - 1
            src = self.x0 if self.previewer.target == "x0" and self.x0 is not None else latents * rec.xt_scale
            preview = self.previewer(src, last_step=last)
            if preview is not None:
                self.run.preview = preview
                if self.previewer.channels:
                    channels = latent_channels(src)
        if self.on_step is not None:
            self.on_step(StepEvent(self.run, rec, preview, channels))
        if self.stop.is_set():
            pipe._interrupt = True  # diffusers skips the remaining iterations, then decodes (PR 5867)
        return {}

    def _user_step(self, i: int) -> int:
        """The user's step (1..N) that loop iteration i belongs to."""
        n, calls = self.settings.steps, len(self.scheduler.timesteps)
        if getattr(self.scheduler, "order", 1) == 2:  # Heun / DPM2: two iterations per step, one for the last
            return min(i // 2 + 1, n)
        return max(1, n - (calls - 1 - i))  # PLMS's extra warm-up iteration belongs to step 1

    def _first_unet_call(self, module, args):
        if self.t_last is None:
            self.t_last = time.perf_counter()
            if self.lab.device.type == "cuda":
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                self.cuda_events.append(ev)

    def finish(self):
        """Step times from the CUDA events (one sync, at the end of the run)."""
        if self.cuda_events:
            torch.cuda.synchronize()
            for rec, (a, b) in zip(self.run.steps, zip(self.cuda_events, self.cuda_events[1:])):
                rec.seconds = a.elapsed_time(b) / 1000


def generate(lab, prompt: str | Settings | None = None, *, preview: str | None = None, preview_target: str = "x0",
             preview_channels: bool = False, on_step: Callable[[StepEvent], Any] | None = None, record: bool = True,
             record_dtype: torch.dtype = torch.float16, stop: threading.Event | None = None, taesd=None, scheduler=None,
             _started: Callable[[Run], Any] | None = None, **kwargs) -> Run:
    """Run the pipeline, recording every step. See :class:`Settings` for the arguments; diffusers' names
    (guidance_scale, num_inference_steps, num_images_per_prompt) are accepted too.

    preview: None, "approx", "taesd" or "vae"; preview_target "x0" (predicted clean image) or "xt";
      preview_channels: also hand on_step the 4 latent channels of each previewed step.
    record_dtype: the dtype of the recorded tensors (float16 keeps them small; float32 for measurements).
    scheduler: a diffusers scheduler to use as it is (a copy of it), instead of the catalog's sampler and
      schedule: for experiments such as DDIM with a bad config. The run records it as "custom <class>".
    on_step: called with a StepEvent after every step (in the thread that runs the pipeline). On CUDA the
      record tensors are copied asynchronously and complete when the run ends; during the run read
      ``event.preview``, which is already on the host.
    """
    settings, options = _settings_and_options(prompt, kwargs)
    if options:
        raise TypeError(f"Unknown argument(s) {sorted(options)}. Settings: {', '.join(sorted(_SETTING_NAMES))}; "
                        "options: preview, preview_target, preview_channels, on_step, record, record_dtype, stop, taesd, "
                        "scheduler.")
    if scheduler is not None:
        settings = validate(lab, replace(settings, sampler=f"custom {type(scheduler).__name__}", schedule="custom"),
                            catalog=False)
        scheduler = copy.deepcopy(scheduler)
    else:
        settings = validate(lab, settings)
        scheduler = scheduler_for(lab, settings)
    previewer = None
    if preview is not None:
        vae = None
        if preview == "vae":
            vae = lab.pipe.vae
        elif preview == "taesd":
            vae = load_taesd(lab.family, taesd, device=lab.device, dtype=lab.dtype)
        previewer = Previewer(decoder=preview, target=preview_target, family=lab.family, vae=vae,
                              channels=preview_channels)
    if not lab._lock.acquire(blocking=False):
        raise BusyError("A run is already going on this model. Stop it (job.stop()) or wait for it "
                        "(job.wait()) before starting another; runs on one pipeline are not queued.")
    try:
        if settings.schedule == "custom":
            sampler_name, concrete = settings.sampler, "custom"
        else:
            spec, concrete = resolve(settings.sampler, settings.schedule)
            sampler_name = spec.name
        report = {"sampler": sampler_name, "schedule": concrete, "class": type(scheduler).__name__,
                  "changes": {k: [_jsonable(a), _jsonable(b)] for k, (a, b) in
                              effective_config(scheduler, lab.default_scheduler).items()}}
        run = Run(settings=settings, model=lab.source, family=lab.family, device=str(lab.device),
                  dtype=str(lab.dtype).removeprefix("torch."), plan=plan(scheduler, settings.steps),
                  scheduler_report=report)
        for problem in prompt_problems(lab, settings.prompt, settings.negative_prompt):
            run.problems.append(problem)
            notice(f"sdlab: {problem}", stacklevel=3)
        if _started is not None:
            _started(run)
        stop = stop or threading.Event()
        pipe = lab.pipe
        pipe.scheduler = scheduler
        t0 = time.perf_counter()
        tap = _Tap(lab, settings, run, scheduler, previewer, on_step, stop, record, record_dtype)
        try:
            with tap, torch.inference_mode():
                out = pipe(**pipe_kwargs(lab, settings), output_type="np", callback_on_step_end=tap.callback,
                           callback_on_step_end_tensor_inputs=["latents"])
        except torch.OutOfMemoryError as exc:
            tap.last_latents = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise GenerationError(
                f"Out of memory generating {settings.batch_size} image(s) at {settings.width}x{settings.height} "
                f"on {lab.device}. Try a smaller size or batch, preview='approx', "
                "lab.pipe.enable_attention_slicing(), or lab.pipe.enable_model_cpu_offload(). "
                "The model is still loaded and ready."
            ) from exc
        finally:
            pipe._interrupt = False
        tap.finish()
        run.stopped = stop.is_set() and len(run.steps) < len(scheduler.timesteps)
        run.final_latents = tap.last_latents.detach().float().cpu() if tap.last_latents is not None else None
        images = out.images
        with np.errstate(invalid="ignore"):  # NaN pixels (VAE overflow) are reported below, by _check_finite
            run.images = pipe.image_processor.numpy_to_pil(images)
        run.nsfw = getattr(out, "nsfw_content_detected", None)
        run.seconds = time.perf_counter() - t0
        _check_finite(run, images)
        return run
    finally:
        lab._lock.release()


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return repr(v)


def _check_finite(run: Run, images: np.ndarray) -> None:
    problem = None
    if run.final_latents is not None and not torch.isfinite(run.final_latents).all():
        problem = ("The latents contain NaN/inf: the UNet overflowed. Use dtype='float32' "
                   "(sdlab.load(..., dtype='float32')), a lower cfg, or fewer steps at this size.")
    elif not np.isfinite(images).all():  # (an all-black image can be legitimate: the safety checker's)
        problem = ("The decoded image contains NaN/inf (black picture): the VAE overflowed in "
                   f"{run.dtype}. Decode in float32: lab.pipe.vae.to(torch.float32) or load with "
                   "dtype='float32'; for SDXL use an fp16-fixed VAE (madebyollin/sdxl-vae-fp16-fix).")
    if problem is not None:
        run.problems.append(problem)
        warn(f"sdlab: {problem}", stacklevel=4)


class Job:
    """A run in a worker thread. ``stop()`` ends it within one step; ``wait()`` returns the run or
    re-raises the worker's exception; ``run`` is the run so far."""

    def __init__(self, lab, settings: Settings, on_done: Callable[["Job"], Any] | None = None, **options):
        self._on_done = on_done
        self._stop = threading.Event()
        self._done = threading.Event()
        self._run: Run | None = None
        self._result: Run | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(lab, settings, options), daemon=True,
                                       name="sdlab-generate")

    def _work(self, lab, settings, options):
        def started(run):
            self._run = run
            self._started.set()

        try:
            self._result = generate(lab, settings, stop=self._stop, _started=started, **options)
        except BaseException as exc:  # handed to wait(); never lost
            self._error = exc
        finally:
            self._started.set()
            self._done.set()
            if self._on_done is not None:
                self._on_done(self)  # in the worker thread, after the run is complete

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
        if not self._done.wait(timeout):
            raise TimeoutError(f"The run is still going after {timeout} s; call job.stop() to end it.")
        if self._error is not None:
            raise self._error
        return self._result

    def __repr__(self) -> str:
        state = "done" if self.done else ("stopping" if self._stop.is_set() else "running")
        return f"Job({state}, {self.run!r})"


def _settings_and_options(prompt, kwargs: dict) -> tuple[Settings, dict]:
    """Split generate()'s keyword arguments into the Settings and the run options."""
    chosen = {k: v for k, v in kwargs.items() if ALIASES.get(k, k) in _SETTING_NAMES}
    options = {k: v for k, v in kwargs.items() if k not in chosen}
    if isinstance(prompt, Settings):
        return prompt.updated(**chosen), options
    return Settings.from_kwargs(**({} if prompt is None else {"prompt": prompt}), **chosen), options


def generate_async(lab, prompt: str | Settings | None = None, **kwargs) -> Job:
    """Start :func:`generate` in a worker thread and return its :class:`Job` at once. ``on_done(job)`` is
    called in the worker when the run has ended (done, stopped or failed).

    Bad settings, and a second run on a model whose run is still going (BusyError), raise here, in the
    caller's thread, before any thread starts. Runs are refused, not queued."""
    on_done = kwargs.pop("on_done", None)
    settings, options = _settings_and_options(prompt, kwargs)
    settings = validate(lab, settings)
    if lab._lock.locked():
        raise BusyError("A run is already going on this model. Stop it (job.stop()) or wait for it "
                        "(job.wait()) before starting another; runs on one pipeline are not queued.")
    job = Job(lab, settings, on_done=on_done, **options)
    job.start()
    job._started.wait()
    return job


_SETTING_NAMES = {f.name for f in fields(Settings)}
