"""Samplers by the names users know (A1111, ComfyUI, diffusers), built as configured diffusers schedulers.

``make_scheduler(config_or_scheduler, "DPM++ 2M", "karras")`` returns a diffusers scheduler built from
the model's own scheduler config (training betas, prediction type, ... kept), with the known pitfalls
set explicitly (DDIM's clip_sample / set_alpha_to_one, diffusers issues 706, 1545 and 6068; DPM-Solver++'s
final sigma, issue 6295 and PR 6477; lower_order_final on SDXL, issue 5433) and the schedule type realised
the diffusers way:
a ``timestep_spacing`` for timestep schedules, a ``use_*_sigmas`` flag where diffusers has one, and
otherwise explicit sigmas handed to ``set_timesteps`` by a thin subclass (so a plain ``pipe(...)`` call
follows the schedule too). A schedule a sampler cannot follow raises ValueError; none is ignored.
"""
from __future__ import annotations

import copy
import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from . import noise_schedules as S

_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_FLAG_OF = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas", "beta": "use_beta_sigmas"}
# diffusers computes its flag schedules with these fixed parameters
_FLAG_DEFAULTS = {"karras": {"rho": 7.0}, "exponential": {}, "beta": {"alpha": 0.6, "beta": 0.6}}
_SPACING = {"uniform": ("linspace", None), "sgm_uniform": ("trailing", None), "simple": ("trailing", None),
            "ddim_uniform": ("leading", 1)}


@dataclass(frozen=True)
class Sampler:
    """One catalog entry."""

    name: str  # as A1111 writes it
    scheduler_class: str  # the diffusers scheduler class's name
    options: Mapping[str, Any] = field(default_factory=dict)
    order: int = 1  # UNet calls per step
    stochastic: bool = False
    default_schedule: str = "uniform"  # what A1111's 'Automatic' picks
    comfy: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def cls(self) -> str:
        """The diffusers scheduler class's name (an alias of ``scheduler_class``)."""
        return self.scheduler_class

    def supported_schedules(self) -> list[str]:
        """The schedule types this sampler can follow."""
        cls = _scheduler_class(self.scheduler_class)
        init = inspect.signature(cls.__init__).parameters
        takes_sigmas = _takes_explicit_sigmas(cls)
        if self.name == "LCM":  # LCM picks timesteps from its own 50-step training grid
            return [S.AUTOMATIC]
        out = [S.AUTOMATIC]
        for st in S.SCHEDULES.values():
            if st.realisation == "spacing" and "timestep_spacing" in init:
                out.append(st.name)
            elif st.realisation == "flag" and (_FLAG_OF[st.name] in init or takes_sigmas):
                out.append(st.name)
            elif st.realisation == "sigmas" and takes_sigmas:
                out.append(st.name)
        return out


CATALOG: dict[str, Sampler] = {s.name: s for s in [
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
            default_schedule="karras", comfy=("dpmpp_2m",)),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            stochastic=True, default_schedule="exponential", comfy=("dpmpp_2m_sde",)),
    Sampler("DPM++ SDE", "DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
            default_schedule="karras", comfy=("dpmpp_sde",),
            note="diffusers' closest equivalent (singlestep DPM-Solver++ 2); deterministic, unlike A1111's"),
    Sampler("DPM2", "KDPM2DiscreteScheduler", order=2, default_schedule="karras", comfy=("dpm_2",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", order=2, stochastic=True, default_schedule="karras",
            comfy=("dpm_2_ancestral",)),
    Sampler("Euler", "EulerDiscreteScheduler", comfy=("euler",)),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", stochastic=True, comfy=("euler_ancestral",),
            aliases=("euler ancestral",)),
    Sampler("Heun", "HeunDiscreteScheduler", order=2, comfy=("heun",)),
    Sampler("LMS", "LMSDiscreteScheduler", comfy=("lms",)),
    Sampler("DDIM", "DDIMScheduler", default_schedule="ddim_uniform", comfy=("ddim",)),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, default_schedule="ddim_uniform",
            aliases=("pndm",), note="one more UNet call than steps: the first step is a warm-up"),
    Sampler("UniPC", "UniPCMultistepScheduler", default_schedule="ddim_uniform", comfy=("uni_pc",)),
    Sampler("DEIS", "DEISMultistepScheduler", default_schedule="ddim_uniform", comfy=("deis",)),
    Sampler("DDPM", "DDPMScheduler", stochastic=True, default_schedule="ddim_uniform", comfy=("ddpm",)),
    Sampler("LCM", "LCMScheduler", stochastic=True, default_schedule=S.AUTOMATIC, comfy=("lcm",),
            note="for LCM-distilled models or LoRAs; on other models it gives blurry results"),
]}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower().replace("++", "pp").replace("+", "p") if ch.isalnum())


_LOOKUP: dict[str, str] = {}
for _s in CATALOG.values():
    for _key in (_s.name, *_s.comfy, *_s.aliases):
        _LOOKUP[_norm(_key)] = _s.name
    _LOOKUP.setdefault(_norm(_s.scheduler_class), _s.name)  # a class name picks its first (default-options) entry
    _LOOKUP.setdefault(_norm(_s.scheduler_class.removesuffix("Scheduler")), _s.name)


def samplers() -> list[Sampler]:
    """Every sampler sdlab offers, with its A1111 name, diffusers class and options, order, stochasticity
    and default schedule."""
    return list(CATALOG.values())


def parse_sampler(name: str) -> tuple[Sampler, str | None]:
    """Resolve a sampler name as A1111, ComfyUI or diffusers writes it. A legacy A1111 name with the
    schedule in it ("DPM++ 2M Karras") comes back split: (DPM++ 2M, "karras")."""
    if isinstance(name, Sampler):
        return name, None
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A sampler is named by a string such as 'DPM++ 2M' or 'euler_ancestral', not {name!r}.")
    key = _norm(name)
    if key in _LOOKUP:
        return CATALOG[_LOOKUP[key]], None
    for sched_key, sched in sorted(S._LOOKUP.items(), key=lambda kv: -len(kv[0])):
        if key.endswith(sched_key) and key[: -len(sched_key)] in _LOOKUP:
            return CATALOG[_LOOKUP[key[: -len(sched_key)]]], sched
    close = difflib.get_close_matches(key, list(_LOOKUP), n=1, cutoff=0.5)
    hint = f" Closest match: {_LOOKUP[close[0]]!r}." if close else ""
    raise ValueError(f"Unknown sampler {name!r}.{hint} Valid samplers: {', '.join(CATALOG)} "
                     "(ComfyUI names like 'dpmpp_2m' and diffusers class names work too).")


def resolve(sampler: str, schedule: str = S.AUTOMATIC) -> tuple[Sampler, str]:
    """(catalog entry, concrete schedule name) for a sampler and schedule as a user wrote them.

    Raises ValueError for unknown names, conflicting schedules and impossible combinations."""
    spec, legacy = parse_sampler(sampler)
    requested = S.resolve_schedule(schedule)
    if legacy is not None and requested not in (S.AUTOMATIC, legacy):
        raise ValueError(f"Sampler {sampler!r} already names the {legacy!r} schedule, but schedule={schedule!r} "
                         f"was also given. Use sampler={spec.name!r} with the schedule you want.")
    name = legacy or requested
    concrete = spec.default_schedule if name == S.AUTOMATIC else name
    supported = spec.supported_schedules()
    if concrete not in supported:
        raise ValueError(f"{spec.name} ({spec.scheduler_class}) cannot follow the {concrete!r} schedule. "
                         f"Schedules it supports: {', '.join(supported)}.")
    return spec, concrete


def is_variance_exploding(scheduler) -> bool:
    """True for k-diffusion-style schedulers (Euler, Heun, LMS, DPM2, ...): their samples are x0 + sigma eps
    and their scale_model_input divides by sqrt(sigma^2 + 1). False for DDIM, DPM-Solver, UniPC, DEIS, PLMS,
    DDPM, LCM, which keep variance-preserving samples sqrt(abar) x0 + sqrt(1 - abar) eps. Read off
    init_noise_sigma, which is exactly 1 for the latter and sigma_max (or sqrt(sigma_max^2 + 1)) for the former."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0


def _takes_explicit_sigmas(cls) -> bool:
    # UniPC's set_timesteps has a sigmas argument, but only for flow-matching models.
    return "sigmas" in inspect.signature(cls.set_timesteps).parameters and cls.__name__ != "UniPCMultistepScheduler"


def _scheduler_class(name: str):
    import diffusers

    return getattr(diffusers, name)


_SUBCLASSES: dict[type, type] = {}


def _with_explicit_sigmas(cls: type) -> type:
    """A subclass of cls whose set_timesteps(n) hands the sdlab schedule's sigmas to the real one."""
    if cls in _SUBCLASSES:
        return _SUBCLASSES[cls]

    def set_timesteps(self, num_inference_steps=None, device=None, *args, **kwargs):
        if num_inference_steps is not None and not args and kwargs.get("sigmas") is None \
                and kwargs.get("timesteps") is None:
            sig = self.sdlab_sigmas(num_inference_steps)
            return cls.set_timesteps(self, device=device, sigmas=sig.tolist())
        return cls.set_timesteps(self, num_inference_steps, device, *args, **kwargs)

    set_timesteps.__signature__ = inspect.signature(cls.set_timesteps)
    sub = type(cls.__name__, (cls,), {"set_timesteps": set_timesteps, "__module__": __name__,
                                     "__doc__": f"{cls.__name__} following an sdlab schedule via explicit sigmas."})
    _SUBCLASSES[cls] = sub
    return sub


def _base_config(config_or_scheduler) -> tuple[dict, str | None]:
    """The config to build from, and the model family when a lab says it (a lab is recognised by its
    ``default_scheduler``, so this module needs nothing from sdlab.models)."""
    family = None
    if hasattr(config_or_scheduler, "default_scheduler"):
        family = getattr(config_or_scheduler, "family", None)
        config_or_scheduler = config_or_scheduler.default_scheduler
    config = getattr(config_or_scheduler, "config", config_or_scheduler)
    if not isinstance(config, Mapping):
        raise TypeError("make_scheduler takes a scheduler config (dict), a diffusers scheduler or an sdlab Lab, "
                        f"not {type(config_or_scheduler).__name__}.")
    return dict(config), family


def make_scheduler(config_or_scheduler, sampler: str, schedule: str = S.AUTOMATIC, *, family: str | None = None,
                   **params: Any):
    """A configured diffusers scheduler for ``sampler`` and ``schedule``, built from the model's config.

    config_or_scheduler: the model's scheduler config, a diffusers scheduler, or an sdlab Lab (its
      default scheduler is used, never whatever scheduler was installed since).
    family: 'sd1', 'sd2' or 'sdxl', for family-specific schedules (Align Your Steps); taken from a Lab.
    params: schedule parameters (rho for karras / polyexponential, alpha and beta for beta) and any
      diffusers option of the scheduler class (e.g. solver_order=3); unknown ones raise ValueError.
    """
    spec, concrete = resolve(sampler, schedule)
    base, lab_family = _base_config(config_or_scheduler)
    return build_scheduler(base, spec, concrete, family=family or lab_family or "sd1", **params)


def build_scheduler(base: Mapping, spec: Sampler, concrete: str, *, family: str = "sd1", **params: Any):
    """``make_scheduler`` for a sampler and schedule already resolved (a catalog entry and a concrete
    schedule name): nothing is looked up by name again."""
    base = dict(base)
    cls = _scheduler_class(spec.scheduler_class)
    init = inspect.signature(cls.__init__).parameters
    st = S.SCHEDULES.get(concrete)
    sched_params = {k: params.pop(k) for k in list(params) if st is not None and k in st.params}
    unknown = [k for k in params if k not in init]
    if unknown:
        valid = sorted(set(init) - {"self", "kwargs"})
        raise ValueError(f"{spec.scheduler_class} has no option(s) {unknown}. Its options: {', '.join(valid)}.")

    overrides: dict[str, Any] = dict(spec.options)
    # Known pitfalls, set explicitly whatever the previous scheduler had (see the module docstring).
    for key, value in {"clip_sample": False, "set_alpha_to_one": False, "final_sigmas_type": "zero",
                       "lower_order_final": True, "euler_at_final": False, "use_flow_sigmas": False,
                       "thresholding": False}.items():
        if key in init:
            overrides[key] = value
    for flag in _FLAGS:
        if flag in init:
            overrides[flag] = False
    explicit = False
    if st is not None:
        if st.realisation == "spacing":
            spacing, offset = _SPACING[concrete]
            overrides["timestep_spacing"] = spacing
            if offset is not None:
                overrides["steps_offset"] = offset
        elif st.realisation == "flag" and _FLAG_OF[concrete] in init and \
                all(sched_params.get(k, v) == v for k, v in _FLAG_DEFAULTS[concrete].items()):
            overrides[_FLAG_OF[concrete]] = True
            if "timestep_spacing" in init:  # so the flag spans the model's full sigma range
                overrides["timestep_spacing"] = "linspace"
        else:
            explicit = True
            if not _takes_explicit_sigmas(cls):
                raise ValueError(f"{spec.name} ({spec.scheduler_class}) can follow {concrete!r} only with diffusers' fixed "
                                 f"parameters {_FLAG_DEFAULTS.get(concrete)}; got {sched_params}.")
    overrides.update(params)
    # Only what this class takes: from_config would log every foreign key of the model's old scheduler.
    # "_use_default_values" would make from_config drop keys the old class had at their defaults, even
    # when the config was edited since (prediction_type set to v_prediction, say): the config is the truth.
    base = {k: v for k, v in base.items() if k in init or (k.startswith("_") and k != "_use_default_values")}
    if explicit:
        cls = _with_explicit_sigmas(cls)
    scheduler = cls.from_config(base, **overrides)
    scheduler.sdlab_sampler = spec.name
    scheduler.sdlab_schedule = concrete
    scheduler.sdlab_schedule_params = dict(sched_params)
    if explicit:
        training = S.TrainingSchedule.of(scheduler)
        scheduler.sdlab_sigmas = lambda n: S.sigmas(concrete, n, model=training, family=family, **sched_params)
    return scheduler


def config_changes(scheduler, reference=None) -> dict[str, tuple[Any, Any]]:
    """What differs between ``scheduler`` and ``reference``, a scheduler or a config (normally the model's
    own, ``lab.default_scheduler``): {key: (reference value, value in use)}. Keys the reference lacks are
    compared with the scheduler class's defaults."""
    ref = dict(getattr(reference, "config", reference) or {})
    ref_cls = type(reference).__name__ if hasattr(reference, "config") else ref.get("_class_name")
    out: dict[str, tuple[Any, Any]] = {}
    if ref_cls != type(scheduler).__name__:
        out["class"] = (ref_cls, type(scheduler).__name__)
    defaults = {k: p.default for k, p in inspect.signature(type(scheduler).__init__).parameters.items()}
    for key, value in scheduler.config.items():
        if key.startswith("_"):
            continue
        if key in ref:
            if ref[key] != value:
                out[key] = (ref[key], value)
        elif defaults.get(key, value) != value:  # absent from the model's config: compare with the class default
            out[key] = (f"(default {defaults[key]!r})", value)
    if getattr(scheduler, "sdlab_schedule", None) and hasattr(scheduler, "sdlab_sigmas"):
        out["set_timesteps(sigmas=...)"] = (None, f"sdlab {scheduler.sdlab_schedule} schedule "
                                                  f"{scheduler.sdlab_schedule_params or ''}".strip())
    return out


def describe(scheduler, reference=None) -> str:
    """A short report: sampler, schedule, and every setting that differs from the reference config."""
    head = f"{getattr(scheduler, 'sdlab_sampler', type(scheduler).__name__)}, schedule " \
           f"{getattr(scheduler, 'sdlab_schedule', '?')}: {type(scheduler).__name__}"
    rows = [f"  {k}: {a!r} -> {b!r}" for k, (a, b) in config_changes(scheduler, reference).items() if k != "class"]
    return "\n".join([head, *rows]) if rows else head + " (same settings as the model's default)"


effective_config = config_changes  # the name it had first (it returns the differences, not the config)


@dataclass(frozen=True)
class Plan:
    """What a configured scheduler really does for ``steps`` steps, read off the scheduler itself."""

    steps: int
    sigmas: np.ndarray  # steps + 1 noise levels the sampler moves through, ending with the final one
    timesteps: np.ndarray  # the timesteps the UNet is called at, one per call
    nfe: int  # UNet calls (with CFG each call evaluates the batch twice, counted once as A1111 does)
    step_of_call: np.ndarray  # per UNet call, the user step (1..steps) it belongs to
    sigma_after_call: np.ndarray  # per UNet call, the noise level of the sample the scheduler returns
    init_noise_sigma: float = 1.0  # what the pipeline multiplies the starting noise by
    variance_exploding: bool = False  # samples are x0 + sigma eps (is_variance_exploding), else VP

    @property
    def calls_per_step(self) -> float:
        return self.nfe / self.steps


def plan(scheduler, steps: int) -> Plan:
    """Run ``set_timesteps`` on a copy of the scheduler and report its sigmas, timesteps and NFE."""
    steps = S._check_n(steps)
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps, device="cpu")
    timesteps = s.timesteps.detach().cpu().double().numpy()
    raw = getattr(s, "sigmas", None)
    if raw is not None:
        raw = torch.as_tensor(raw).detach().cpu().double().numpy()
        if getattr(s, "order", 1) == 2:  # Heun / DPM2 repeat each level (two UNet calls per step): dedupe
            levels = np.concatenate([raw[:1], raw[1:][np.diff(raw) != 0]])
        else:
            levels = raw
    else:  # DDIM / PNDM / DDPM / LCM work on timesteps: sigma from alpha-bar at each step
        ab = s.alphas_cumprod.double().numpy()
        ts = np.unique(timesteps.astype(int))[::-1]
        final = float(S.sigma_from_alpha_bar(ab[0])) if s.config.get("set_alpha_to_one") is False \
            and type(s).__name__ in ("DDIMScheduler", "PNDMScheduler") else 0.0
        levels = np.concatenate([S.sigma_from_alpha_bar(ab[ts]), [final]])
    calls = np.arange(len(timesteps))
    if getattr(s, "order", 1) == 2:  # Heun / DPM2: two calls per step, one for the last
        step_of_call = np.minimum(calls // 2 + 1, steps)
    else:  # PLMS's extra warm-up call belongs to step 1
        step_of_call = np.maximum(1, steps - (len(timesteps) - 1 - calls))
    # step() moves the scheduler's step_index on by one per call; without sigmas, the level of the step
    after = np.array([raw[k + 1] if raw is not None and k + 1 < len(raw) else levels[step_of_call[k]] for k in calls])
    return Plan(steps=steps, sigmas=levels, timesteps=timesteps, nfe=len(timesteps), step_of_call=step_of_call,
                sigma_after_call=after, init_noise_sigma=float(s.init_noise_sigma),
                variance_exploding=is_variance_exploding(s))
