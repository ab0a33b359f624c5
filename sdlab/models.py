"""Loading Stable Diffusion pipelines once and keeping them resident in the kernel.

``load()`` returns a :class:`Lab`, a handle around the diffusers pipeline (``lab.pipe``). Handles are
cached in this process, keyed by (source, device, dtype, variant): running a notebook's load cell
again returns the very same object without touching the disk.

Residency policy: at most ``max_resident()`` models stay loaded (default 2, or ``$SDLAB_MAX_RESIDENT``;
change it with ``set_max_resident(n)``). Loading one more unloads the least recently used first, with a
notice, *before* the new weights are read, so that two large models never have to fit on a GPU at once.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from . import checks
from .errors import InvalidArgument, SdlabError, WrongType
from . import devices
from .notices import mark_said, notice
from .tiny import build_tiny_pipeline, build_tiny_sdxl_pipeline

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TOY = "toy"  # what sdlab.load() falls back to when the default model cannot be had
Family = Literal["sd1", "sd2", "sdxl", "toy"]
SourceKind = Literal["tiny", "toy", "hub", "folder", "single_file"]


class _Default:
    """The default of a ``Lab.generate`` argument: the Settings' (or RunOptions') own value, or, when the
    prompt is a Settings, that Settings' value."""

    def __repr__(self) -> str:
        return "default"


DEFAULT = _Default()


def _given(arguments: dict, aliases: dict) -> dict:
    """The arguments a caller gave to Lab.generate (those not left at DEFAULT), aliases included."""
    given = {k: v for k, v in arguments.items() if k not in ("self", "prompt", "aliases", "__class__")
             and v is not DEFAULT}
    for k in ("scheduler", "stop", "on_done"):
        if k in given and given[k] is None:
            del given[k]
    if given.get("queue") is False:
        del given["queue"]
    return {**given, **aliases}


def _build_toy(dtype, prediction_type="epsilon"):
    from .toy import build_toy_pipeline

    return build_toy_pipeline(dtype, prediction_type)


def _toy_description() -> str:
    from .toy import describe

    return describe()


def _toy_size() -> int:
    from .toy import attributes

    return len(attributes())


def _toy_notice() -> str:
    return f"sdlab: using {_toy_description()}"


@dataclass(frozen=True)
class Builtin:
    """A model sdlab builds in code (no weights to download)."""

    kind: SourceKind
    family: Family
    build: Callable[[torch.dtype], Any]  # dtype -> pipeline
    notice: Callable[[], str]  # the notice shown when it is loaded

    def __repr__(self) -> str:
        return f"Builtin({self.kind!r}, family={self.family!r})"


_TINY_NOTICE = ("sdlab: using the built-in tiny model: random weights, so its images are noise. "
                "Load a real model with sdlab.load('<hub id, folder or .safetensors file>') for pictures.")
BUILTINS: dict[str, Builtin] = {
    "tiny": Builtin("tiny", "sd1", build_tiny_pipeline, lambda: _TINY_NOTICE),
    "tiny-sdxl": Builtin("tiny", "sdxl", build_tiny_sdxl_pipeline, lambda: _TINY_NOTICE),
    "toy": Builtin("toy", "toy", _build_toy, _toy_notice),
    "toy-v": Builtin("toy", "toy", lambda dt: _build_toy(dt, "v_prediction"), _toy_notice),
}

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
SUPPORTED_PIPELINES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
# Keyword arguments that would run code from the model's repository: never passed on.
_REMOTE_CODE_KWARGS = {"custom_pipeline", "trust_remote_code", "custom_revision"}


class LoadError(SdlabError, ValueError):
    """A model could not be loaded; the message says why and what to do."""


class ModelNotAvailable(LoadError):
    """The model is neither cached locally nor downloadable right now. ``why``: that reason in a few words."""

    def __init__(self, *args, why: str = "it is not cached and cannot be downloaded", **kwargs):
        super().__init__(*args, **kwargs)
        self.why = why


class UnsafeCheckpointError(LoadError):
    """A pickle checkpoint was refused because unpickling can run arbitrary code."""


class UnsupportedModelError(LoadError):
    """The weights are not Stable Diffusion 1.x, 2.x or SDXL."""


class ModelUnloadedError(SdlabError, RuntimeError):
    """The handle's model was unloaded with sdlab.unload()."""


@dataclass(eq=False)
class Lab:
    """A loaded Stable Diffusion model. ``lab.pipe`` is the diffusers pipeline itself."""

    source: str
    kind: SourceKind
    family: Family
    device: torch.device
    dtype: torch.dtype
    variant: str | None = None
    requested: str | None = None  # what the user asked for, when sdlab fell back to something else
    _pipe: Any = field(default=None, repr=False)
    _default_scheduler: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # held by whatever changes the model
    _unloaded_because: str = field(default="", repr=False)
    _allow_pickle: bool = field(default=False, repr=False)  # as it was loaded: a pickled Lab loads the same way
    _load_kwargs: dict = field(default_factory=dict, repr=False)  # the pipeline_kwargs it was loaded with

    def _unloaded(self) -> ModelUnloadedError:
        why = f" ({self._unloaded_because})" if self._unloaded_because else ""
        return ModelUnloadedError(f"The model {self.source!r} was unloaded{why}. Load it again with "
                                  f"lab = sdlab.load({self.source!r}) and use the new handle.")

    @property
    def pipe(self):
        if self._pipe is None:
            raise self._unloaded()
        return self._pipe

    @property
    def is_loaded(self) -> bool:
        return self._pipe is not None

    @property
    def is_tiny(self) -> bool:
        """The random-weight test model: its pictures are noise."""
        return self.kind == "tiny"

    @property
    def is_toy(self) -> bool:
        """The teaching model (an exact denoiser over its own pictures): ``sdlab.toy.is_teaching_model``."""
        from .toy import is_teaching_model

        return is_teaching_model(self)

    @property
    def default_scheduler(self):
        """The scheduler the model shipped with (a private copy, never modified by sdlab)."""
        if self._default_scheduler is None:
            raise self._unloaded()
        return self._default_scheduler

    @property
    def prediction_type(self) -> str:
        return self._default_scheduler.config.get("prediction_type", "epsilon")

    @property
    def parameters(self) -> int:
        return sum(p.numel() for m in _modules(self._pipe) for p in m.parameters()) if self._pipe else 0

    @property
    def memory_bytes(self) -> int:
        if self._pipe is None:
            return 0
        return sum(t.numel() * t.element_size() for m in _modules(self._pipe)
                   for t in (*m.parameters(), *m.buffers()))

    @property
    def reference(self) -> LabReference:
        """Where and how this model was loaded: what a pickled Lab carries instead of its weights."""
        plain = {k: v for k, v in self._load_kwargs.items() if v is None or isinstance(v, (str, int, float, bool))}
        return LabReference(source=self.source, device=self.device.type, dtype=devices.dtype_name(self.dtype),
                            variant=self.variant, allow_pickle=self._allow_pickle,
                            pipeline_kwargs=tuple(sorted(plain.items())),
                            unsent=tuple(sorted(set(self._load_kwargs) - set(plain))))

    def __reduce__(self):
        # a Lab sent to another process (a Dask worker) arrives as its reference, never its weights; the
        # reference loads it there when first used, with the same options (config=..., allow_pickle)
        ref = self.reference
        return (LabReference, (ref.source, ref.device, ref.dtype, ref.variant, ref.allow_pickle, ref.pipeline_kwargs,
                               ref.unsent))

    def set_sampler(self, sampler: str, schedule: str = "automatic", **params: Any):
        """Install a catalog sampler on the pipeline (built from the model's own scheduler config); the
        weights are untouched. Returns the scheduler. While a run is going on this model it raises BusyError
        (the run goes on unchanged): install it after the run.

        It configures ``lab.pipe`` for plain diffusers calls. sdlab's own runs take their sampler from their
        settings (``sampler=``, default DPM++ 2M), so that a run is reproducible from its settings alone; pass
        ``scheduler=lab.pipe.scheduler`` to run the installed one through sdlab."""
        from .generation import BusyError
        from .recipes import make_scheduler

        scheduler = make_scheduler(self, sampler, schedule, **params)
        if not self._lock.acquire(blocking=False):
            raise BusyError(f"A run is going on {self.source!r}: set_sampler would change its scheduler mid-run. "
                            "Wait for it (job.wait()) or stop it (job.stop()), then set the sampler; or pass "
                            "sampler=... to the next generate call.")
        try:
            self.pipe.scheduler = scheduler
        finally:
            self._lock.release()
        return scheduler

    def generate(self, prompt: "str | Settings | None" = None, *, negative_prompt: str = DEFAULT,
                 cfg: float = DEFAULT, sampler: str = DEFAULT, schedule: str = DEFAULT, steps: int = DEFAULT,
                 seed: int | None = DEFAULT, width: int | None = DEFAULT, height: int | None = DEFAULT,
                 batch_size: int = DEFAULT, eta: float | None = DEFAULT, schedule_params: dict = DEFAULT,
                 prompt_syntax: str = DEFAULT, emphasis: str = DEFAULT, clip_skip: int = DEFAULT,
                 preview: str | None = DEFAULT, preview_target: str = DEFAULT, preview_channels: bool = DEFAULT,
                 on_step=DEFAULT, record: bool = DEFAULT, record_dtype: torch.dtype = DEFAULT, taesd=DEFAULT,
                 attention: bool = DEFAULT, scheduler=None, stop=None, queue: bool = False, **aliases) -> "Run":
        """Generate one picture (or a batch) with every step recorded; returns a Run.

        prompt: the text, or a Settings (from ``sdlab.read_settings``, a Studio, a past ``run.settings``),
          whose fields the other arguments then change. Unless given, each argument keeps its default
          (or the Settings' value): negative_prompt "", cfg 7.0, sampler "DPM++ 2M" (A1111 / ComfyUI names:
          "Euler a", "DPM++ 2M SDE", "dpmpp_2m"...), schedule "automatic" ("Karras", "exponential", ...),
          steps 20, seed None (random; the run records the seed used), width / height None (the model's
          size), batch_size 1, eta None (the sampler's own), schedule_params {} (e.g. {"rho": 7}).
        prompt_syntax "auto": A1111's prompt syntax where the prompt uses it ((word:1.2), [cat:dog:0.5],
          [red|blue], BREAK, prompts past 77 tokens); "a1111" always, "plain" never. emphasis "original"
          (A1111's modes "no_norm", "ignore", "none", or "comfyui"); clip_skip 1 (A1111's Clip skip).
        preview: None, "approx", "taesd" or "vae" (what on_step's events carry); preview_target "x0" or
          "xt"; preview_channels False. on_step: called with a StepEvent after every UNet call.
        record True / record_dtype torch.float16: keep every step's latents, x0 and noise predictions.
        scheduler: a diffusers scheduler to run as it is, instead of sampler / schedule.
        stop: a threading.Event that ends the run within one step. queue: wait for a run going on this
          model instead of raising BusyError.
        aliases: diffusers' and A1111's names (guidance_scale, num_inference_steps, cfg_scale, ...).
        The run is the diffusers pipeline's own: its image is bit-identical to ``lab.pipe(...)`` with the
        same arguments (see sdlab.generation.generate)."""
        given = _given(locals(), aliases)
        from .generation import generate

        return generate(self, prompt, **given)

    def generate_async(self, prompt: "str | Settings | None" = None, *, negative_prompt: str = DEFAULT,
                       cfg: float = DEFAULT, sampler: str = DEFAULT, schedule: str = DEFAULT, steps: int = DEFAULT,
                       seed: int | None = DEFAULT, width: int | None = DEFAULT, height: int | None = DEFAULT,
                       batch_size: int = DEFAULT, eta: float | None = DEFAULT, schedule_params: dict = DEFAULT,
                       prompt_syntax: str = DEFAULT, emphasis: str = DEFAULT, clip_skip: int = DEFAULT,
                       preview: str | None = DEFAULT, preview_target: str = DEFAULT,
                       preview_channels: bool = DEFAULT, on_step=DEFAULT, record: bool = DEFAULT,
                       record_dtype: torch.dtype = DEFAULT, taesd=DEFAULT, attention: bool = DEFAULT, scheduler=None,
                       on_done=None, **aliases) -> "Job":
        """Like generate (the same arguments), in a worker thread; returns a Job at once (job.stop(),
        job.wait(), job.run). ``on_done(job)`` is called in the worker when the run has ended."""
        given = _given(locals(), aliases)
        from .generation import generate_async

        return generate_async(self, prompt, **given)

    def word_influence(self, run, words, steps=None):
        """What each word of the prompt does at each step: for the sample a run held entering each step, the
        change in the x0 prediction when the word is taken out of the prompt (``sdlab.attention.word_influence``;
        one extra denoiser call per word and step). ``run``: a run of this model with its records (or Settings:
        they are run first); ``steps``: user steps (default: six across the run). Returns an ``Influence``
        (``.map(word, step)``, ``.total(word)``); ``plots.influence_grid`` shows it."""
        from .influence import word_influence
        from .records import Run
        from .settings import Settings

        if isinstance(run, Settings):
            run = self.generate(run, record_dtype=torch.float32)
        if not isinstance(run, Run):
            raise WrongType(f"run must be a Run of this model (or Settings), not {type(run).__name__}.",
                            argument="run")
        if steps is None:  # six steps spread over the run, the first and the last included
            n = run.settings.steps
            steps = sorted({int(round(1 + i * (n - 1) / 5)) for i in range(6)}) if n > 1 else [1]
        return word_influence(self, run, words, steps)

    def generator(self, seed: int) -> torch.Generator:
        """A CPU generator: the same seed gives the same initial noise on every device."""
        return torch.Generator("cpu").manual_seed(checks.whole("seed", seed, low=0, high=2 ** 64 - 1))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list:
        """PIL images of (B, 4, h, w) latents, decoded with the model's VAE exactly as the pipeline does."""
        pipe = self.pipe
        vae = pipe.vae
        z = checks.latents("latents", latents, channels=vae.config.latent_channels)
        z = z.to(device=vae.device, dtype=vae.dtype)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        image = vae.decode(z / vae.config.scaling_factor + shift, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Latents (B, 4, H/8, W/8) of images (PIL, a list of them, or H x W x 3 uint8 arrays): the mode of
        the VAE's encoding, scaled as the pipeline's latents are."""
        import numpy as np

        pipe = self.pipe
        vae = pipe.vae
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise InvalidArgument("images is empty: pass a PIL image, an H x W x 3 uint8 array, or a list of them.",
                                  argument="images")
        try:
            items = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in items]
        except (TypeError, ValueError):
            items = [np.zeros(0)]
        f = pipe.vae_scale_factor
        for a in items:
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise InvalidArgument(f"images must be RGB pictures (PIL images or H x W x 3 uint8 arrays), not an array "
                                      f"of shape {a.shape} and dtype {a.dtype}.", argument="images")
            if a.shape[0] % f or a.shape[1] % f or a.shape != items[0].shape:
                raise InvalidArgument(f"images must all have one size, each side a multiple of {f} (the VAE's "
                                      f"downsampling): got {[x.shape[:2] for x in items][:4]}.", argument="images")
        pixels = torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).float() / 127.5 - 1
        dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((dist.mode() - shift) * vae.config.scaling_factor).float().cpu()

    def __repr__(self) -> str:
        state = "" if self.is_loaded else ", UNLOADED"
        extra = (", tiny random weights: images are noise" if self.is_tiny else
                 ", teaching model: draws only its own pictures" if self.is_toy else "")
        return (f"Lab({self.source!r}, family={self.family!r}, device={str(self.device)!r}, "
                f"dtype={devices.dtype_name(self.dtype)!r}{extra}{state})")


@dataclass(frozen=True)
class Resident:
    """One row of ``sdlab.loaded()``."""

    source: str
    kind: str
    family: str
    device: str
    dtype: str
    variant: str | None
    parameters: int
    memory_bytes: int

    def __str__(self) -> str:
        return (f"{self.source} [{self.family}] on {self.device} {self.dtype}: "
                f"{self.parameters / 1e6:.1f} M parameters, {self.memory_bytes / 2**20:.1f} MiB")


@dataclass
class UnloadReport:
    freed: list[Resident]
    cuda_bytes_before: int | None = None
    cuda_bytes_after: int | None = None

    @property
    def parameters(self) -> int:
        return sum(r.parameters for r in self.freed)

    @property
    def memory_bytes(self) -> int:
        return sum(r.memory_bytes for r in self.freed)

    def __str__(self) -> str:
        if not self.freed:
            return "Nothing was loaded; nothing to free."
        lines = [f"Unloaded {len(self.freed)} model(s), {self.memory_bytes / 2**20:.1f} MiB of weights:"]
        lines += [f"  {r}" for r in self.freed]
        if self.cuda_bytes_before is not None:
            lines.append(f"  CUDA memory allocated: {self.cuda_bytes_before / 2**20:.0f} MiB -> "
                         f"{self.cuda_bytes_after / 2**20:.0f} MiB")
        return "\n".join(lines)

    __repr__ = __str__


_Key = tuple[str, str, str, "str | None"]
_RESIDENT: "OrderedDict[_Key, Lab]" = OrderedDict()
_REGISTRY_LOCK = threading.RLock()
def _max_resident_from_env(default: int = 2) -> int:
    """$SDLAB_MAX_RESIDENT, checked where it enters: a bad value is said once and the default is used (an
    environment variable must never break ``import sdlab``)."""
    text = os.environ.get("SDLAB_MAX_RESIDENT", "").strip()
    if not text:
        return default
    if text.isdigit() and int(text) >= 1:
        return int(text)
    import warnings

    from .notices import SdlabWarning  # a setting to fix: a warning (stderr), not a notice

    warnings.warn(f"sdlab: SDLAB_MAX_RESIDENT={text!r} is not a whole number >= 1 (how many models stay loaded); "
                  f"using {default}.", SdlabWarning, stacklevel=2)
    return default


_max_resident = _max_resident_from_env()


def max_resident() -> int:
    return _max_resident


def set_max_resident(n: int) -> None:
    """At most n models stay loaded; loading one more unloads the least recently used first."""
    global _max_resident
    _max_resident = checks.whole("n", n, low=1, hint=" It is how many models stay loaded.")


def load(model: str | os.PathLike | None = None, *, device: str = "auto", dtype: str | torch.dtype = "auto",
         variant: str | None = None, allow_pickle: bool = False, offline: bool | None = None,
         **pipeline_kwargs: Any) -> Lab:
    """Load a Stable Diffusion model once and keep it resident; return its :class:`Lab` handle.

    model: a hub id ("stable-diffusion-v1-5/stable-diffusion-v1-5"), a local diffusers folder, a single
      ``.safetensors`` checkpoint, "toy" / "toy-v" (the built-in teaching model: an exact denoiser that
      draws real pictures on any CPU; "toy-v" answers in v-prediction) or "tiny" / "tiny-sdxl" (random
      weights, SD 1.x or SDXL architecture, for tests). None means ``$SDLAB_MODEL`` if set, else
      ``DEFAULT_MODEL``; if that is not cached and cannot be downloaded, the toy model is used with a notice.
    device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps".
    dtype: "auto" (float16 on CUDA, float32 elsewhere), "float32", "float16", "bfloat16".
    allow_pickle: load a pickle checkpoint (.ckpt/.pt/.bin). Unpickling can run code: only for files you trust.
    offline: never contact the hub (default: ``$HF_HUB_OFFLINE``).
    pipeline_kwargs: passed on to diffusers' from_pretrained / from_single_file. They are not part of the
      residency key (source, device, dtype, variant): to reload with others, sdlab.unload(source) first.
    """
    if variant is not None:
        checks.text("variant", variant, hint=" Such as 'fp16', or None.")
    checks.flag("allow_pickle", allow_pickle)
    if offline is not None:
        checks.flag("offline", offline)
    dev = devices.resolve_device(device)
    dt = devices.resolve_dtype(dtype, dev)
    bad = _REMOTE_CODE_KWARGS & pipeline_kwargs.keys()
    if bad:
        raise LoadError(f"sdlab never loads remote code; remove {sorted(bad)} from the arguments.")
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}

    if model is None:
        requested = os.environ.get("SDLAB_MODEL") or DEFAULT_MODEL
        try:
            return _load_source(requested, dev, dt, variant, allow_pickle, offline, pipeline_kwargs)
        except ModelNotAvailable as exc:
            notice(f"sdlab: using the built-in teaching model (\"toy\") because {requested} is not available "
                   f"here: {exc.why}. It draws only its own {_toy_size()} pictures of shapes; see sdlab.toy.vocabulary() "
                   "for the words it knows, and the README for loading Stable Diffusion.", stacklevel=3)
            lab = _load_source(TOY, dev, dt, None, False, offline, {}, announce=False)
            lab.requested = requested
            return lab
    return _load_source(_source_text(model, "model"), dev, dt, variant, allow_pickle, offline, pipeline_kwargs)


def _source_text(model, name: str) -> str:
    if not isinstance(model, (str, os.PathLike)):
        raise WrongType(f"{name} must name a model by a string or path: a hub id, a folder, a .safetensors file, "
                        f"'toy' or 'tiny'{' (or be a Lab handle, or None for all)' if name == 'which' else ''}, "
                        f"not {type(model).__name__} ({model!r:.80}).", argument=name)
    return os.fspath(model)


def _load_source(model: str, dev: torch.device, dt: torch.dtype, variant: str | None, allow_pickle: bool,
                 offline: bool, pipeline_kwargs: dict, announce: bool = True) -> Lab:
    kind, source = classify_source(model, allow_pickle=allow_pickle)
    key: _Key = (source, str(dev), devices.dtype_name(dt), variant)
    with _REGISTRY_LOCK:
        lab = _RESIDENT.get(key)
        if lab is not None and lab.is_loaded:
            _RESIDENT.move_to_end(key)
            return lab
        while len(_RESIDENT) >= _max_resident:
            _, old = next(iter(_RESIDENT.items()))
            notice(f"sdlab: at most {_max_resident} models stay loaded; unloading the least recently used, "
                   f"{old.source!r}, first (sdlab.set_max_resident(n) changes the limit).", stacklevel=4)
            unload(old, because=f"evicted to load {source!r}: at most {_max_resident} models stay loaded; "
                                "sdlab.set_max_resident(n) raises the limit")
        pipe = _load_pipeline(kind, source, dt, variant, offline, pipeline_kwargs)
        LOADS[source] = LOADS.get(source, 0) + 1
        try:
            family = BUILTINS[source].family if source in BUILTINS else detect_family(pipe)
            pipe = pipe.to(dev)
        except BaseException:
            del pipe
            gc.collect()
            raise
        if source in BUILTINS and announce:
            notice(BUILTINS[source].notice(), stacklevel=4)
        lab = Lab(source=source, kind=kind, family=family, device=dev, dtype=dt, variant=variant, _pipe=pipe,
                  _allow_pickle=allow_pickle, _load_kwargs=dict(pipeline_kwargs),
                  _default_scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config))
        _RESIDENT[key] = lab
        return lab


# How many times this process built each source's pipeline (a resident model is not built again): what a
# Dask worker reports to show that it loads a model once across the tasks of several sweeps.
LOADS: dict[str, int] = {}


@dataclass(frozen=True)
class LabReference:
    """What a pickled Lab becomes: where to load it from and how, never its weights. Where it is used
    (on a Dask worker, say) it resolves through ``sdlab.load``, so each process loads a model once and
    keeps it resident (the residency limit applies per process); ``ref.generate(...)`` works as on a Lab."""

    source: str
    device: str  # "cpu", "cuda", "mps": the kind only, so a worker uses the GPU it has
    dtype: str
    variant: str | None = None
    allow_pickle: bool = False
    pipeline_kwargs: tuple[tuple[str, Any], ...] = ()  # the plain ones (config="folder", ...), as (name, value)
    unsent: tuple[str, ...] = ()  # pipeline_kwargs that were objects (a VAE, say): they cannot travel

    def __getattr__(self, name: str):
        # used as a Lab (lab.generate(...), lab.pipe) it loads, or finds resident, the model it names;
        # unpickling never loads anything (a Dask scheduler deserialises task arguments too)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def resolve(self) -> "Lab":
        if self.unsent:
            raise LoadError(f"The model {self.source!r} was loaded with {', '.join(self.unsent)}=<an object>, which "
                            "cannot be sent to another process: load it there by name (a path or hub id, e.g. "
                            "config='folder'), or run this here without an executor.")
        if self.source in BUILTINS:  # the user was told which built-in model it is; a worker need not repeat it
            mark_said(BUILTINS[self.source].notice())
        try:
            return load(self.source, device=self.device, dtype=self.dtype, variant=self.variant,
                        allow_pickle=self.allow_pickle, **dict(self.pipeline_kwargs))
        except Exception as exc:
            import socket

            raise LoadError(f"This process ({socket.gethostname()}, pid {os.getpid()}) cannot load the model "
                            f"{self.source!r}: {exc} A Dask worker needs the model where it runs: the same hub id "
                            "in its cache, or the folder or file at the same path.") from exc


def is_safetensors_file(path: Path) -> bool:
    """Whether a file starts as the safetensors format does: an 8-byte little-endian header length, then that
    many bytes of JSON (``{``), within the file (huggingface/safetensors' format description)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def classify_source(model: str, *, allow_pickle: bool = False) -> tuple[SourceKind, str]:
    """Say what kind of source ``model`` is, and its canonical form; refuse what cannot be loaded."""
    if not isinstance(model, str) or not model.strip():
        raise LoadError(f"model must be a hub id, a folder, a .safetensors file or 'toy', not {model!r}.")
    model = model.strip()
    if model.lower() in BUILTINS:
        return BUILTINS[model.lower()].kind, model.lower()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            singles = sorted(path.glob("*.safetensors"))
            hint = (f" It holds {singles[0].name}: load that file instead." if singles else
                    " A diffusers folder holds model_index.json with unet/, vae/, text_encoder/ ... beside it.")
            raise LoadError(f"The folder {str(path)!r} is not a diffusers pipeline folder (no model_index.json).{hint}")
        return "folder", str(path.resolve())
    if path.is_file():
        # decided by the file itself, never by the name it is reached by: a link named x.safetensors to a
        # .ckpt is a .ckpt, and a file is a safetensors file only if it starts as one
        real = path.resolve()
        named = {path.suffix.lower(), real.suffix.lower()}
        if is_safetensors_file(real):
            if real.suffix.lower() != ".safetensors":
                raise LoadError(f"{path.name} holds a safetensors checkpoint under another name ({real.name}); "
                                "give it the .safetensors suffix so that diffusers reads it as one.")
            return "single_file", str(real)
        if ".safetensors" in named:
            via = f" (it links to {real.name})" if real.name != path.name else ""
            raise UnsafeCheckpointError(
                f"{path.name}{via} is not a readable .safetensors file: it does not start with safetensors' header "
                "(a damaged download, or a pickle checkpoint under a safetensors name, whose unpickling can run "
                "code). Use the model's real .safetensors file.")
        if named & PICKLE_SUFFIXES:
            if not allow_pickle:
                raise UnsafeCheckpointError(
                    f"{path.name} is a pickle checkpoint; unpickling it can run arbitrary code. Prefer a "
                    ".safetensors version of the model. If you trust this file, load it with "
                    "sdlab.load(..., allow_pickle=True)."
                )
            return "single_file", str(real)
        raise LoadError(
            f"{path.name} is not a model file sdlab can load (expected .safetensors, or a diffusers folder)."
        )
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model.replace("/", "") or \
        Path(model).suffix.lower() in PICKLE_SUFFIXES | {".safetensors"} or model.count("/") > 1
    if looks_like_path:
        raise LoadError(f"model: no such file or folder: {model!r}. Check the path (it is relative to {os.getcwd()!r}).")
    if model.count("/") != 1 or any(c in model for c in " \t\\:"):
        raise LoadError(
            f"model={model!r} is neither an existing path nor a hub id like 'owner/name'. "
            f"Use 'toy', a hub id (e.g. {DEFAULT_MODEL!r}), a diffusers folder or a .safetensors file."
        )
    return "hub", model


def detect_family(pipe) -> Family:
    """SD 1.x, SD 2.x or SDXL, from the pipeline class and the UNet; anything else is refused."""
    name = type(pipe).__name__
    if name not in SUPPORTED_PIPELINES:
        raise UnsupportedModelError(
            f"sdlab supports Stable Diffusion 1.x, 2.x and SDXL text-to-image pipelines; this model is a "
            f"{name}. Load it with diffusers directly, or pick an SD 1.x / 2.x / SDXL model."
        )
    if SUPPORTED_PIPELINES[name] == "sdxl":
        return "sdxl"
    return "sd2" if pipe.unet.config.cross_attention_dim == 1024 else "sd1"


def checkpoint_family(path: str) -> Family:
    """Family of a single-file (A1111 / ComfyUI layout) checkpoint, from its tensor names alone."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:
        raise LoadError(f"{Path(path).name} is not a readable .safetensors file ({exc}).") from None
    if any("lora" in k.lower() for k in keys[:200]):
        raise UnsupportedModelError(
            f"{Path(path).name} is a LoRA, not a full model. Load the base model, then add the LoRA with "
            "lab.pipe.load_lora_weights(path)."
        )
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        raise UnsupportedModelError(f"{Path(path).name} looks like a FLUX checkpoint; sdlab supports SD 1.x, 2.x and SDXL.")
    if any("joint_blocks" in k for k in keys):
        raise UnsupportedModelError(f"{Path(path).name} looks like an SD3 checkpoint; sdlab supports SD 1.x, 2.x and SDXL.")
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise UnsupportedModelError(
            f"{Path(path).name} has no UNet weights (model.diffusion_model.*): it is not a full Stable "
            "Diffusion checkpoint (a VAE, an embedding or a LoRA?)."
        )
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    raise UnsupportedModelError(
        f"{Path(path).name} has a UNet but no text encoder sdlab recognises; sdlab supports SD 1.x, 2.x and SDXL."
    )


def _load_pipeline(kind: SourceKind, source: str, dt: torch.dtype, variant: str | None, offline: bool,
                   kwargs: dict):
    """Read the weights. Separate so tests can count how often real loading work happens."""
    if source in BUILTINS and kind in ("tiny", "toy"):
        return BUILTINS[source].build(dt)
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    common = dict(dtype=dt, **kwargs)
    if variant is not None:
        common["variant"] = variant
    if kind == "folder":
        _check_model_index(Path(source) / "model_index.json")
        try:
            return DiffusionPipeline.from_pretrained(source, local_files_only=True, **common)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, EnvironmentError) as exc:
            raise LoadError(f"model: diffusers could not load the folder {source!r}: {_first_line(exc).rstrip('.')}. Check that "
                            "it is a complete diffusers pipeline folder (save_pretrained writes one).") from exc
    if kind == "single_file":
        family = checkpoint_family(source) if source.endswith(".safetensors") else None
        cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        common.pop("variant", None)
        try:
            return cls.from_single_file(source, local_files_only=offline, **common)
        except (OSError, ValueError) as exc:
            raise LoadError(
                f"diffusers could not load {Path(source).name} as a single-file {family or 'SD'} checkpoint: {exc}\n"
                "Single-file loading needs the matching diffusers config; offline, pass config=<a local diffusers "
                "folder of the same family> (e.g. sdlab.load(path, config='path/to/sd15-folder'))."
            ) from exc
    # hub id: the local cache first (fast, works offline), then the network unless offline.
    try:
        return DiffusionPipeline.from_pretrained(source, local_files_only=True, **common)
    except OSError as exc:
        cached_error = exc
    how = (f"fetch it where there is internet with `hf download {source}` (huggingface_hub's CLI), "
           "or pass a local diffusers folder or .safetensors file")
    if offline:
        raise ModelNotAvailable(f"{source!r} is not in the local Hugging Face cache and sdlab is offline; {how}.",
                                why="it is not in this machine's Hugging Face cache and sdlab is offline") \
            from cached_error
    if not hub_reachable():
        raise ModelNotAvailable(f"{source!r} is not in the local Hugging Face cache and the hub cannot be reached; "
                                f"{how}.", why="it is not in this machine's Hugging Face cache and there is no "
                                               "connection to the Hugging Face hub") from cached_error
    try:
        return DiffusionPipeline.from_pretrained(source, **common)
    except OSError as exc:
        raise ModelNotAvailable(f"{source!r} is not cached and could not be downloaded ({_first_line(exc)}); {how}.",
                                why="it is not cached and could not be downloaded") from exc


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether a connection to the Hugging Face hub ($HF_ENDPOINT, else huggingface.co) opens within
    ``timeout`` seconds. Asked before a download is tried, so that an offline classroom gets the teaching
    model at once and no "Couldn't connect to the Hub" block (name resolution can hang: it runs in a thread)."""
    from urllib.parse import urlparse
    import socket

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    answer: list[bool] = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    worker = threading.Thread(target=attempt, daemon=True, name="sdlab-hub-check")
    worker.start()
    worker.join(timeout + 0.5)
    return bool(answer and answer[0])


def _check_model_index(index: Path) -> None:
    """A folder's model_index.json: valid, a supported pipeline, and every component it lists present (diffusers
    would otherwise load a pipeline without a tokenizer that fails at the first prompt, or name the parent
    folder when vae/ is missing)."""
    try:
        data = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise LoadError(f"model: {index} is not valid JSON ({exc}); the folder is not a usable diffusers "
                        "pipeline.") from None
    if not isinstance(data, dict):
        raise LoadError(f"model: {index} holds a {type(data).__name__}, not the mapping of a pipeline's components "
                        "that diffusers writes; the folder is not a usable diffusers pipeline.")
    cls = data.get("_class_name", "?")
    if cls not in SUPPORTED_PIPELINES:
        raise UnsupportedModelError(
            f"{index.parent.name} holds a {cls}; sdlab supports Stable Diffusion 1.x, 2.x and SDXL "
            "text-to-image pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline)."
        )
    for name, spec in data.items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue  # private keys, and components saved as None (no safety checker)
        if not (index.parent / name).is_dir():
            raise LoadError(f"model: the folder {str(index.parent)!r} lacks its '{name}/' subfolder, which its "
                            f"model_index.json lists ({spec[-1] if spec else name}); copy the whole pipeline folder.")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _modules(pipe) -> list[torch.nn.Module]:
    if pipe is None:
        return []
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def _resident_row(lab: Lab) -> Resident:
    return Resident(source=lab.source, kind=lab.kind, family=lab.family, device=str(lab.device),
                    dtype=devices.dtype_name(lab.dtype), variant=lab.variant, parameters=lab.parameters,
                    memory_bytes=lab.memory_bytes)


def loaded() -> list[Resident]:
    """What is resident now, least recently used first."""
    with _REGISTRY_LOCK:
        return [_resident_row(lab) for lab in _RESIDENT.values()]


def unload(which: Lab | str | None = None, *, because: str = "sdlab.unload()") -> UnloadReport:
    """Free one model (a handle, or every handle of a source such as 'tiny'), or all when ``which`` is None.

    Drops sdlab's references and the handle's pipeline, clears the stored traceback of the last
    exception (which would keep tensors alive), collects garbage and empties the CUDA cache. A model with a
    run going is not unloaded: BusyError, and nothing is unloaded. A handle used afterwards says that it was
    unloaded (``because``) and how to load it again.
    """
    cuda = torch.cuda.is_available()
    before = torch.cuda.memory_allocated() if cuda else None
    with _REGISTRY_LOCK:
        if which is None:
            victims = list(_RESIDENT.items())
        elif isinstance(which, Lab):
            victims = [(k, v) for k, v in _RESIDENT.items() if v is which]
            if not victims and which.is_loaded:  # a handle evicted from the registry but still holding weights
                victims = [(None, which)]
        else:
            text = _source_text(which, "which")
            victims = [(k, v) for k, v in _RESIDENT.items() if v.source == text or v.requested == text]
            if not victims:
                try:
                    _, source = classify_source(text, allow_pickle=True)
                except LoadError:
                    source = None
                victims = [(k, v) for k, v in _RESIDENT.items() if v.source == source]
        held = []
        try:
            for _, lab in victims:  # every victim's lock first: all of them are unloaded, or none
                if not lab._lock.acquire(blocking=False):
                    from .generation import BusyError

                    raise BusyError(f"A run is going on {lab.source!r}; it cannot be unloaded ({because}) until "
                                    "the run ends: wait for it (job.wait()) or stop it (job.stop()).")
                held.append(lab)
            freed = []
            for key, lab in victims:
                if lab.is_loaded:
                    freed.append(_resident_row(lab))
                if key is not None:
                    _RESIDENT.pop(key, None)
                lab._pipe = None
                lab._default_scheduler = None
                lab._unloaded_because = because
        finally:
            for lab in held:
                lab._lock.release()
    _clear_last_traceback()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    after = torch.cuda.memory_allocated() if cuda else None
    return UnloadReport(freed=freed, cuda_bytes_before=before, cuda_bytes_after=after)


def _clear_last_traceback() -> None:
    # The last uncaught exception keeps its frames, and so every tensor they referenced, alive.
    for name in ("last_traceback", "last_value", "last_type", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
