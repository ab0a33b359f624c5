"""Samplers by the names users know (A1111, ComfyUI, diffusers), built as configured diffusers schedulers.

``make_scheduler(config_or_scheduler, "DPM++ 2M", "karras")`` returns a diffusers scheduler built from the
model's own scheduler config (training betas, prediction type, ... kept), with the known pitfalls set
explicitly (DDIM's clip_sample / set_alpha_to_one, diffusers issues 706, 1545 and 6068; DPM-Solver++'s
final sigma, issue 6295 and PR 6477; lower_order_final on SDXL, issue 5433).

A name means what A1111 means by it (A1111's modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py
and sd_schedulers.py; ComfyUI's comfy/samplers.py for its names). The schedule's noise levels are always
A1111's formula (``noise_schedules``), and a scheduler follows them in the first way its class allows:

- ``sigmas``: Euler takes explicit sigmas in ``set_timesteps``.
- ``levels``: schedulers with diffusers' exponential-sigmas option (Heun, LMS, DPM2, DPM2 a, DPM++ SDE,
  DPM-Solver, UniPC, DEIS) get the levels through that option's conversion method, in a thin subclass;
  where diffusers would then round the UNet's timesteps to whole ones (DPM-Solver, UniPC, DEIS), they are
  given back fractional, so the UNet is asked about exactly the noise level each update assumes, as in
  k-diffusion (A1111 does not quantize by default: its enable_quantization option is off).
- ``spacing``: the rest (Euler a, DDIM, PLMS, DDPM) take only a timestep spacing; they follow the
  timestep schedules (uniform, sgm_uniform, simple, ddim_uniform), and where diffusers' spacing differs
  from A1111's formula for that step count the plan says by how much.

A1111 and ComfyUI drop the next-to-last sigma for DPM2 and DPM2 a (A1111 for DPM++ 3M SDE too), and
A1111's k-diffusion samplers start from sigma_0 x noise; sdlab does both. Names from either tool that no
diffusers scheduler implements are refused with the reason and the nearest choice.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch

from . import noise_schedules as S

# DPMSolverSDEScheduler builds its Brownian tree on [sigma_min, sigma_max] as Python floats and then queries
# it at float32 sigmas, which round up to 1e-7 outside the interval; torchsde clamps such a query to the
# interval and warns at every step (torchsde/_brownian/brownian_interval.py). Only that warning is hidden.
warnings.filterwarnings("ignore", message=r"Should have t\w* ?[<>]=t[01] but got", category=UserWarning,
                        module=r"torchsde\._brownian")

Route = Literal["sigmas", "levels", "spacing"]
_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class Sampler:
    """One catalog entry: the names, the diffusers scheduler and options, and how far it matches A1111."""

    name: str  # sdlab's name: A1111's label where A1111 has the sampler
    scheduler_class: str  # the diffusers scheduler class's name
    options: Mapping[str, Any] = field(default_factory=dict)
    order: int = 1  # UNet calls per step
    stochastic: bool = False
    default_schedule: str = "uniform"  # what A1111's 'Automatic' picks
    comfy: tuple[str, ...] = ()  # ComfyUI's names for it
    aliases: tuple[str, ...] = ()
    a1111: str | None = None  # A1111's label (None: not an A1111 sampler)
    discard_penultimate: bool = False  # build n+1 levels and drop the next-to-last (A1111's discard_next_to_last_sigma)
    ends_at_sigma_min: bool = False  # its last step goes to sigma_min, not 0
    k_diffusion_start: bool = False  # start from sigma_0 x noise, as A1111's k-diffusion samplers do
    matches_a1111: bool | None = None  # None where A1111 has no such sampler
    fidelity: str = ""  # what is the same as A1111 / ComfyUI, and what differs and why
    note: str = ""

    @property
    def cls(self) -> str:
        """The diffusers scheduler class's name (an alias of ``scheduler_class``)."""
        return self.scheduler_class

    @property
    def route(self) -> Route:
        """How this sampler's scheduler is made to follow a schedule (see the module docstring)."""
        return _route(_scheduler_class(self.scheduler_class))

    def supported_schedules(self) -> list[str]:
        """The schedule types this sampler can follow."""
        if self.name == "LCM":  # LCM picks timesteps from its own 50-step training grid
            return [S.AUTOMATIC]
        route = self.route
        return [S.AUTOMATIC] + [st.name for st in S.SCHEDULES.values() if st.sampleable and (
            route != "spacing" or (st.spacing is not None and (self.scheduler_class, st.name) not in REFUSED_SCHEDULES))]


_SAME = "k-diffusion's sampler on the same noise levels, from the same noise, gives the same latents (to 1e-6, tests)"
_SDE_NOISE = ("the noise it adds differs: A1111 and ComfyUI draw it from a Brownian tree seeded with the image "
              "seed, diffusers from the pipeline's generator, so a seed gives another picture")
_SAME_UPDATE = ("Schedule and update are A1111's: given the same noise, k-diffusion's sampler gives the same latents "
                "(to 1e-6, tests)")

CATALOG: dict[str, Sampler] = {s.name: s for s in [
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
            default_schedule="karras", comfy=("dpmpp_2m",), a1111="DPM++ 2M", k_diffusion_start=True,
            matches_a1111=True, fidelity=f"{_SAME} (sample_dpmpp_2m)."),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            stochastic=True, default_schedule="exponential", comfy=("dpmpp_2m_sde", "dpmpp_2m_sde_gpu"),
            a1111="DPM++ 2M SDE", k_diffusion_start=True, matches_a1111=False,
            fidelity=f"Not the same picture: {_SDE_NOISE}. {_SAME_UPDATE} (sample_dpmpp_2m_sde)."),
    Sampler("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}, stochastic=True,
            default_schedule="exponential", comfy=("dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu"), a1111="DPM++ 2M SDE Heun",
            k_diffusion_start=True, matches_a1111=False,
            fidelity=f"Not the same picture: {_SDE_NOISE}. {_SAME_UPDATE} (sample_dpmpp_2m_sde, solver_type='heun')."),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", order=2, stochastic=True, default_schedule="karras",
            comfy=("dpmpp_sde", "dpmpp_sde_gpu"), a1111="DPM++ SDE", matches_a1111=True,
            fidelity="diffusers' port of k-diffusion's sample_dpmpp_sde (two UNet calls a step), its Brownian tree "
                     "seeded with the run's seed as A1111 seeds it (modules/sd_samplers_kdiffusion.py, one tree per "
                     "image seed): from the same starting noise, A1111's latents (to 1e-6 on Exponential; 3e-4 on "
                     "Karras, whose float32 sigmas query the tree at times 1e-7 apart; tests). Needs torchsde.",
            note="stochastic: the same seed gives the same picture in sdlab"),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
            stochastic=True, default_schedule="exponential", comfy=("dpmpp_3m_sde", "dpmpp_3m_sde_gpu"),
            a1111="DPM++ 3M SDE", discard_penultimate=True, k_diffusion_start=True, matches_a1111=False,
            fidelity=f"Not the same picture: {_SDE_NOISE}; and the update differs too: with the same noise, "
                     "k-diffusion's sample_dpmpp_3m_sde gives other latents (tests), as diffusers' warm-up step is its "
                     "2M SDE midpoint update, its last steps are lower order, and its third-order term differs from "
                     "k-diffusion's phi_3 (the 0.5 enters with the opposite sign). Like A1111 it drops the "
                     "next-to-last sigma; ComfyUI's dpmpp_3m_sde keeps it."),
    Sampler("DPM2", "KDPM2DiscreteScheduler", order=2, default_schedule="karras", comfy=("dpm_2",), a1111="DPM2",
            discard_penultimate=True, matches_a1111=True,
            fidelity=f"{_SAME} (sample_dpm_2; the next-to-last sigma dropped, as A1111 and ComfyUI do)."),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", order=2, stochastic=True, default_schedule="karras",
            comfy=("dpm_2_ancestral",), a1111="DPM2 a", discard_penultimate=True, matches_a1111=False,
            fidelity=f"{_SAME_UPDATE} (sample_dpm_2_ancestral; the next-to-last sigma dropped); the ancestral noise "
                     "comes from the pipeline's generator, not A1111's, so a seed gives another picture."),
    Sampler("Euler", "EulerDiscreteScheduler", comfy=("euler",), a1111="Euler", matches_a1111=True,
            fidelity=f"{_SAME} (sample_euler). ComfyUI's 'ddim' is this sampler too (Euler on the chosen schedule)."),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", stochastic=True, comfy=("euler_ancestral",), a1111="Euler a",
            aliases=("euler ancestral",), matches_a1111=False,
            fidelity="diffusers' EulerAncestral takes only a timestep spacing: on Uniform it interpolates sigma "
                     "linearly between training steps (A1111 log-linearly; the same at whole timesteps), it cannot "
                     "follow Karras or the other sigma schedules, and its noise comes from the pipeline's generator."),
    Sampler("Heun", "HeunDiscreteScheduler", order=2, comfy=("heun",), a1111="Heun", matches_a1111=True,
            fidelity=f"{_SAME} (sample_heun)."),
    Sampler("LMS", "LMSDiscreteScheduler", comfy=("lms",), a1111="LMS", matches_a1111=True,
            fidelity=f"{_SAME} (sample_lms, order 4)."),
    Sampler("DDIM", "DDIMScheduler", default_schedule="ddim_uniform", a1111="DDIM", matches_a1111=False,
            fidelity="A1111's DDIM runs timesteps range(1, 1000, 1000 // n) and ends at alpha-bar of timestep 0, as "
                     "diffusers' DDIMScheduler does when n divides 1000; otherwise A1111 runs more timesteps than n, "
                     "which DDIMScheduler cannot follow (the plan says so). ComfyUI's 'ddim' is Euler: sampler='Euler'."),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, default_schedule="ddim_uniform", a1111="PLMS",
            aliases=("pndm",), matches_a1111=False,
            fidelity="diffusers' PNDM with skip_prk_steps, as diffusers runs SD; A1111 runs ldm's PLMS on "
                     "range(1, 1000, 1000 // n). Not compared: k-diffusion has no PLMS.",
            note="one more UNet call than steps: the first step is a warm-up"),
    Sampler("UniPC", "UniPCMultistepScheduler",
            {"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"}, comfy=("uni_pc",),
            a1111="UniPC", ends_at_sigma_min=True, matches_a1111=False,
            fidelity="bh1, order 3, lower order at the end, as A1111 (options uni_pc_variant, uni_pc_order) and "
                     "ComfyUI's uni_pc use it, stopping at sigma_min as A1111's does (diffusers' bh1 turns a last "
                     "step to sigma 0 into NaN: infinite h times a zero residual). A1111 runs its own UniPC in "
                     "continuous time and ComfyUI's drops the next-to-last sigma, so neither gives exactly diffusers' "
                     "UniPCMultistepScheduler's result."),
    Sampler("UniPC bh2", "UniPCMultistepScheduler",
            {"solver_type": "bh2", "solver_order": 3, "final_sigmas_type": "sigma_min"}, comfy=("uni_pc_bh2",),
            ends_at_sigma_min=True,
            fidelity="ComfyUI's uni_pc_bh2 (which also drops the next-to-last sigma); A1111's UniPC with the bh2 variant."),
    Sampler("DEIS", "DEISMultistepScheduler", {"solver_order": 3}, comfy=("deis",), ends_at_sigma_min=True,
            fidelity="Not an A1111 sampler. ComfyUI's deis is another DEIS implementation (tAB coefficients); "
                     "diffusers' uses logrho: close, not identical. Stops at sigma_min, as diffusers' DEIS always does."),
    Sampler("DDPM", "DDPMScheduler", stochastic=True, default_schedule="ddim_uniform", comfy=("ddpm",),
            fidelity="Not an A1111 sampler; ComfyUI's ddpm is the same ancestral DDPM step with its own noise."),
    Sampler("LCM", "LCMScheduler", stochastic=True, default_schedule=S.AUTOMATIC, comfy=("lcm",), a1111="LCM",
            matches_a1111=False, fidelity="diffusers' LCMScheduler picks timesteps from its 50-step training grid.",
            note="for LCM-distilled models or LoRAs; on other models it gives blurry results"),
]}


@dataclass(frozen=True)
class Unsupported:
    """A name A1111 or ComfyUI offers that sdlab cannot run, with the reason and what to use instead."""

    name: str
    reason: str
    nearest: str


_NO_DIFFUSERS = "no diffusers scheduler implements it"
_CFGPP = ("CFG++ (Chung et al. 2024) changes how guidance enters each step, which a diffusers scheduler "
          "cannot do on its own")
UNSUPPORTED: dict[str, Unsupported] = {}
for _names, _reason, _nearest in [
    (("DPM++ 2S a", "dpmpp_2s_ancestral", "k_dpmpp_2s_a"),
     f"{_NO_DIFFUSERS} (DPM-Solver++(2S) ancestral; diffusers' singlestep DPM-Solver is deterministic)",
     "DPM++ 2M SDE (stochastic, second order) or Euler a"),
    (("dpmpp_2s_ancestral_cfg_pp",), _CFGPP, "DPM++ 2M SDE"),
    (("DPM fast", "dpm_fast"), f"{_NO_DIFFUSERS} (k-diffusion's sample_dpm_fast)", "DPM++ 2M"),
    (("DPM adaptive", "dpm_adaptive"), f"{_NO_DIFFUSERS} (k-diffusion's adaptive-step sample_dpm_adaptive)", "DPM++ 2M"),
    (("Restart",), f"{_NO_DIFFUSERS} (Restart sampling, Xu et al. 2023)", "Heun or DPM++ 2M"),
    (("DDIM CFG++",), _CFGPP, "DDIM"),
    (("euler_cfg_pp",), _CFGPP, "Euler"),
    (("euler_ancestral_cfg_pp",), _CFGPP, "Euler a"),
    (("dpmpp_2m_cfg_pp",), _CFGPP, "DPM++ 2M"),
    (("heunpp2",), f"{_NO_DIFFUSERS} (Heun++ 2)", "Heun"),
    (("exp_heun_2_x0", "exp_heun_2_x0_sde"), f"{_NO_DIFFUSERS} (exponential Heun in x0)", "DPM++ 2M or DPM++ SDE"),
    (("ipndm", "ipndm_v"), f"{_NO_DIFFUSERS} as ComfyUI runs it (iPNDM on k-diffusion sigmas)", "LMS or DPM++ 2M"),
    (("res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp"),
     f"{_NO_DIFFUSERS} (RES multistep)", "DPM++ 2M (or DPM++ 2M SDE for the ancestral ones)"),
    (("gradient_estimation", "gradient_estimation_cfg_pp"), f"{_NO_DIFFUSERS} (gradient-estimation sampling)", "DPM++ 2M"),
    (("er_sde",), f"{_NO_DIFFUSERS} (Extended Reverse-Time SDE)", "DPM++ 2M SDE"),
    (("seeds_2", "seeds_3"), f"{_NO_DIFFUSERS} (SEEDS exponential SDE solvers)", "DPM++ SDE"),
    (("sa_solver", "sa_solver_pece"), "sdlab does not wire diffusers' SASolverScheduler, whose defaults differ from "
     "ComfyUI's SA-Solver", "DPM++ 2M SDE"),
]:
    for _n in _names:
        UNSUPPORTED[_n] = Unsupported(_n, _reason, _nearest)

# Schedules a spacing-only scheduler has a spacing for but cannot follow consistently.
REFUSED_SCHEDULES = {
    (cls, "uniform"): (f"diffusers' {cls} steps from t to t - T // n, its next timestep only with 'leading' "
                       "(ddim_uniform) or 'trailing' spacing; on evenly spaced timesteps it lands between them "
                       "and does not converge (sdlab.sampler_accuracy measures it)")
    for cls in ("DDIMScheduler", "PNDMScheduler")
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower().replace("++", "pp").replace("+", "p") if ch.isalnum())


_LOOKUP: dict[str, str] = {}
for _s in CATALOG.values():
    for _key in (_s.name, *_s.comfy, *_s.aliases):
        _LOOKUP[_norm(_key)] = _s.name
    _LOOKUP.setdefault(_norm(_s.scheduler_class), _s.name)  # a class name picks its first (default-options) entry
    _LOOKUP.setdefault(_norm(_s.scheduler_class.removesuffix("Scheduler")), _s.name)
_UNSUPPORTED = {_norm(k): v for k, v in UNSUPPORTED.items()}


def samplers() -> list[Sampler]:
    """Every sampler sdlab offers: A1111 label, ComfyUI names, diffusers class and options, order,
    stochasticity, default schedule, and whether (and why not) it matches A1111."""
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
        if key.endswith(sched_key) and key[: -len(sched_key)]:
            head = key[: -len(sched_key)]
            if head in _LOOKUP:
                return CATALOG[_LOOKUP[head]], sched
            if head in _UNSUPPORTED:
                key = head
                break
    if key in _UNSUPPORTED:
        u = _UNSUPPORTED[key]
        raise ValueError(f"{name!r} cannot run in sdlab: {u.reason}. Nearest: {u.nearest}.")
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
        why = REFUSED_SCHEDULES.get((spec.scheduler_class, concrete))
        reason = f": {why}" if why else ""
        raise ValueError(f"{spec.name} ({spec.scheduler_class}) cannot follow the {concrete!r} schedule{reason}. "
                         f"Schedules it supports: {', '.join(supported)}.")
    return spec, concrete


def is_variance_exploding(scheduler) -> bool:
    """True for k-diffusion-style schedulers (Euler, Heun, LMS, DPM2, ...): their samples are x0 + sigma eps
    and their scale_model_input divides by sqrt(sigma^2 + 1). False for DDIM, DPM-Solver, UniPC, DEIS, PLMS,
    DDPM, LCM, which keep variance-preserving samples sqrt(abar) x0 + sqrt(1 - abar) eps. The former
    compute init_noise_sigma from their sigmas (a property); the latter keep a number (1, or sdlab's start)."""
    return isinstance(getattr(type(scheduler), "init_noise_sigma", None), property)


def _route(cls) -> Route:
    params = inspect.signature(cls.set_timesteps).parameters
    if "sigmas" in params and cls.__name__ == "EulerDiscreteScheduler":  # (UniPC's sigmas are for flow models)
        return "sigmas"
    if "use_exponential_sigmas" in inspect.signature(cls.__init__).parameters and hasattr(cls, "_convert_to_exponential"):
        return "levels"
    return "spacing"


def _scheduler_class(name: str):
    import diffusers

    return getattr(diffusers, name)


_SUBCLASSES: dict[tuple[type, Route], type] = {}


def _following_levels(cls: type, route: Route) -> type:
    """A subclass of cls whose set_timesteps(n) follows ``self.sdlab_levels(n)``: as explicit sigmas
    (route "sigmas"), or through the exponential-sigmas conversion with fractional timesteps ("levels").
    A call with the caller's own sigmas or timesteps goes to cls unchanged."""
    if (cls, route) in _SUBCLASSES:
        return _SUBCLASSES[cls, route]

    def set_timesteps(self, num_inference_steps=None, device=None, *args, **kwargs):
        own = args or any(kwargs.get(k) is not None for k in ("sigmas", "timesteps"))
        if num_inference_steps is None or own or getattr(self, "sdlab_levels", None) is None:
            return cls.set_timesteps(self, num_inference_steps, device, *args, **kwargs)
        levels = np.asarray(self.sdlab_levels(num_inference_steps), dtype=np.float64)
        if route == "sigmas":
            cls.set_timesteps(self, device=device, sigmas=levels.tolist())
        else:
            # the class appends its own final level: 0, or (UniPC, DEIS) its last level once more, a
            # zero-length step whose UNet call only serves the corrector
            inner = levels[:-1] if levels[-1] == 0 else levels
            self._sdlab_pending = inner
            try:
                cls.set_timesteps(self, len(inner), device, **kwargs)
            finally:
                self._sdlab_pending = None
            if not torch.is_floating_point(self.timesteps):  # DPM-Solver, UniPC, DEIS would round them
                t = S.TrainingSchedule.of(self).sigma_to_t(inner)
                self.timesteps = torch.from_numpy(t).to(device=self.timesteps.device, dtype=torch.float32)
        if getattr(self, "sdlab_k_diffusion_start", False) and not is_variance_exploding(self):
            self.init_noise_sigma = float(S.vp_scale(levels[0]) * levels[0])  # x = sigma_0 noise, in VP form

    def _convert_to_exponential(self, in_sigmas, num_inference_steps):
        pending = getattr(self, "_sdlab_pending", None)
        if pending is not None:
            return np.array(pending)
        return cls._convert_to_exponential(self, in_sigmas, num_inference_steps)

    set_timesteps.__signature__ = inspect.signature(cls.set_timesteps)
    sub = type(cls.__name__, (cls,), {"set_timesteps": set_timesteps, "_convert_to_exponential": _convert_to_exponential,
                                     "__module__": __name__,
                                     "__doc__": f"{cls.__name__} following sdlab's noise levels ({route})."})
    _SUBCLASSES[cls, route] = sub
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
                   seed: int | None = None, **params: Any):
    """A configured diffusers scheduler for ``sampler`` and ``schedule``, built from the model's config.

    config_or_scheduler: the model's scheduler config, a diffusers scheduler, or an sdlab Lab (its
      default scheduler is used, never whatever scheduler was installed since).
    family: 'sd1', 'sd2' or 'sdxl', for family-specific schedules (Align Your Steps); taken from a Lab.
    params: schedule parameters (rho for karras / polyexponential, alpha and beta for beta) and any
      diffusers option of the scheduler class (e.g. solver_order=3, or noise_sampler_seed for DPM++ SDE,
      which sdlab's runs set to the seed); unknown ones raise ValueError.
    seed: seeds the scheduler's own noise where it has one (DPM++ SDE's Brownian tree), as sdlab's runs
      and A1111 do with the image seed; pass the seed of the run to reproduce it with a plain pipe call.
    """
    spec, concrete = resolve(sampler, schedule)
    base, lab_family = _base_config(config_or_scheduler)
    return build_scheduler(base, spec, concrete, family=family or lab_family or "sd1", seed=seed, **params)


def check_params(spec: Sampler, concrete: str, params: Mapping[str, Any]) -> None:
    """Refuse parameters that neither the schedule nor the sampler's scheduler class takes, and schedule
    parameters that are not finite numbers, naming what is accepted."""
    st = S.SCHEDULES.get(concrete)
    own = dict(st.params) if st is not None else {}
    init = set(inspect.signature(_scheduler_class(spec.scheduler_class).__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(k for k in params if k not in own and k not in init)
    if unknown:
        raise ValueError(f"{unknown} are neither parameters of the {concrete!r} schedule (it takes "
                         f"{', '.join(own) or 'none'}) nor options of {spec.scheduler_class} (it takes "
                         f"{', '.join(sorted(init))}).")
    for key in own:
        value = params.get(key, own[key])
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value) or value <= 0:
            raise ValueError(f"The {concrete!r} schedule's {key} must be a finite number > 0 (default {own[key]}), "
                             f"not {value!r}.")


def build_scheduler(base: Mapping, spec: Sampler, concrete: str, *, family: str = "sd1", seed: int | None = None,
                    **params: Any):
    """``make_scheduler`` for a sampler and schedule already resolved (a catalog entry and a concrete
    schedule name): nothing is looked up by name again. ``seed`` seeds a scheduler's own noise
    (DPM++ SDE's Brownian tree), as A1111 seeds it with the image seed."""
    base = dict(base)
    check_params(spec, concrete, params)
    cls = _scheduler_class(spec.scheduler_class)
    init = inspect.signature(cls.__init__).parameters
    st = S.SCHEDULES.get(concrete)
    sched_params = {k: params.pop(k) for k in list(params) if st is not None and k in st.params}

    # Known pitfalls, set explicitly whatever the previous scheduler had (see the module docstring); then
    # the entry's own options, which may differ on purpose (UniPC's final sigma).
    overrides: dict[str, Any] = {k: v for k, v in {
        "clip_sample": False, "set_alpha_to_one": False, "final_sigmas_type": "zero", "lower_order_final": True,
        "euler_at_final": False, "use_flow_sigmas": False, "thresholding": False}.items() if k in init}
    overrides.update(spec.options)
    for flag in _FLAGS:
        if flag in init:
            overrides[flag] = False
    if seed is not None and "noise_sampler_seed" in init:
        overrides["noise_sampler_seed"] = int(seed)
    route = _route(cls)
    if st is not None and route == "spacing":
        overrides["timestep_spacing"], offset = st.spacing
        if offset is not None:
            overrides["steps_offset"] = offset
    elif st is not None:
        overrides["timestep_spacing"] = "linspace"  # a VE scheduler then starts from sigma_0 x noise
        if route == "levels":
            overrides["use_exponential_sigmas"] = True  # the door the levels come in through
        cls = _following_levels(cls, route)
    overrides.update(params)
    # Only what this class takes: from_config would log every foreign key of the model's old scheduler.
    # "_use_default_values" would make from_config drop keys the old class had at their defaults, even
    # when the config was edited since (prediction_type set to v_prediction, say): the config is the truth.
    base = {k: v for k, v in base.items() if k in init or (k.startswith("_") and k != "_use_default_values")}
    scheduler = cls.from_config(base, **overrides)
    scheduler.sdlab_sampler = spec.name
    scheduler.sdlab_schedule = concrete
    scheduler.sdlab_schedule_params = dict(sched_params)
    scheduler.sdlab_family = family
    if st is not None and route != "spacing":
        training = S.TrainingSchedule.of(scheduler)
        scheduler.sdlab_route = route
        scheduler.sdlab_k_diffusion_start = spec.k_diffusion_start
        scheduler.sdlab_ends_at_sigma_min = spec.ends_at_sigma_min
        scheduler.sdlab_levels = lambda n: schedule_levels(concrete, n, training, family, sched_params,
                                                           spec.discard_penultimate, spec.ends_at_sigma_min)
    return scheduler


def schedule_levels(schedule: str, n: int, training: S.TrainingSchedule, family: str = "sd1",
                    params: Mapping[str, float] | None = None, discard_penultimate: bool = False,
                    ends_at_sigma_min: bool = False) -> np.ndarray:
    """A schedule's noise levels for a sampler's n steps as A1111 computes them: with
    discard_next_to_last_sigma, n+1 steps' levels with the next-to-last dropped; for a sampler that stops
    at sigma_min (UniPC, DEIS), the final 0 replaced by sigma_min (dropped where the last level already is)."""
    params = dict(params or {})
    if discard_penultimate:
        s = S.sigmas(schedule, n + 1, model=training, family=family, **params)
        return np.concatenate([s[:-2], s[-1:]])
    s = S.sigmas(schedule, n, model=training, family=family, **params)
    if ends_at_sigma_min and s[-1] == 0:  # the last step goes to sigma_min instead (A1111's UniPC stops at t_0)
        s = s[:-1].copy()
        if np.isclose(s[-1], training.sigma_min, rtol=1e-2):
            # already there (a tabulated schedule such as Align Your Steps rounds sigma_min to 0.029, just
            # below SD's 0.02917): the solver's floor is the model's sigma_min, never a level under it
            s[-1] = max(s[-1], training.sigma_min)
        else:
            s = np.concatenate([s, [training.sigma_min]])
    return s


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
    route = getattr(scheduler, "sdlab_route", None)
    if route is not None:
        out.pop("use_exponential_sigmas", None)  # not an exponential schedule: the door sdlab's levels come in by
        how = "set_timesteps(sigmas=...)" if route == "sigmas" else "the exponential-sigmas conversion, fractional timesteps"
        params = getattr(scheduler, "sdlab_schedule_params", None) or ""
        out["noise levels"] = (None, f"A1111's {S.schedule_label(scheduler.sdlab_schedule)} {params} via {how}".replace("  ", " "))
    return out


effective_config = config_changes  # the name it had first (it returns the differences, not the config)


def describe(scheduler, reference=None) -> str:
    """A short report: sampler, schedule, and every setting that differs from the reference config."""
    head = f"{getattr(scheduler, 'sdlab_sampler', type(scheduler).__name__)}, schedule " \
           f"{getattr(scheduler, 'sdlab_schedule', '?')}: {type(scheduler).__name__}"
    rows = [f"  {k}: {a!r} -> {b!r}" for k, (a, b) in config_changes(scheduler, reference).items() if k != "class"]
    return "\n".join([head, *rows]) if rows else head + " (same settings as the model's default)"


@dataclass(frozen=True)
class Plan:
    """What a configured scheduler really does for ``steps`` steps, read off the scheduler itself."""

    steps: int  # the steps it really takes (A1111's DDIM schedule can take more than asked for)
    sigmas: np.ndarray  # steps + 1 noise levels the sampler moves through, ending with the final one
    timesteps: np.ndarray  # the timesteps the UNet is called at, one per call
    nfe: int  # UNet calls (with CFG each call evaluates the batch twice, counted once as A1111 does)
    step_of_call: np.ndarray  # per UNet call, the user step (1..steps) it belongs to
    sigma_after_call: np.ndarray  # per UNet call, the noise level of the sample the scheduler returns
    init_noise_sigma: float = 1.0  # what the pipeline multiplies the starting noise by
    variance_exploding: bool = False  # samples are x0 + sigma eps (is_variance_exploding), else VP
    notes: tuple[str, ...] = ()  # where this differs from what A1111 computes for the same names

    @property
    def calls_per_step(self) -> float:
        return self.nfe / self.steps


def plan(scheduler, steps: int) -> Plan:
    """Run ``set_timesteps`` on a copy of the scheduler and report its sigmas, timesteps and NFE, and
    where they differ from A1111's levels for the same sampler and schedule."""
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
    taken = len(levels) - 1
    calls = np.arange(len(timesteps))
    if getattr(s, "order", 1) == 2:  # Heun / DPM2: two calls per step, one for the last
        step_of_call = np.minimum(calls // 2 + 1, taken)
    else:  # PLMS's extra warm-up call belongs to step 1
        step_of_call = np.maximum(1, taken - (len(timesteps) - 1 - calls))
    # step() moves the scheduler's step_index on by one per call; without sigmas, the level of the step
    after = np.array([raw[k + 1] if raw is not None and k + 1 < len(raw) else levels[step_of_call[k]] for k in calls])
    return Plan(steps=taken, sigmas=levels, timesteps=timesteps, nfe=len(timesteps), step_of_call=step_of_call,
                sigma_after_call=after, init_noise_sigma=float(s.init_noise_sigma),
                variance_exploding=is_variance_exploding(s), notes=_differences(s, steps, levels))


def _differences(s, steps: int, levels: np.ndarray) -> tuple[str, ...]:
    """Sentences saying where a scheduler built by sdlab does not follow A1111's levels for its schedule."""
    schedule = getattr(s, "sdlab_schedule", None)
    spec = CATALOG.get(getattr(s, "sdlab_sampler", None))
    if spec is None or schedule not in S.SCHEDULES:
        return ()
    label = S.schedule_label(schedule)
    want = schedule_levels(schedule, steps, S.TrainingSchedule.of(s), getattr(s, "sdlab_family", "sd1"),
                           getattr(s, "sdlab_schedule_params", None), spec.discard_penultimate,
                           spec.ends_at_sigma_min and s.__class__.__name__ == spec.scheduler_class and
                           getattr(s, "sdlab_route", None) is not None)
    notes = []
    if type(s).__name__ in ("DDIMScheduler", "PNDMScheduler"):
        # each step goes from t to t - T // n (diffusers' DDIM / PNDM step()); with 'trailing' spacing and n
        # not dividing T, the timesteps are 12 and 13 apart (say), so steps land between them and the run
        # does not converge (sdlab.sampler_accuracy measures it)
        T = S.TrainingSchedule.of(s).num_train_timesteps
        gaps = -np.diff(np.unique(np.asarray(s.timesteps, dtype=np.int64))[::-1])
        if len(gaps) and np.any(gaps != T // steps):
            notes.append(f"{type(s).__name__} steps from each timestep to t - {T // steps}, but {label} at {steps} "
                         f"steps spaces the timesteps {int(gaps.min())} to {int(gaps.max())} apart, so its steps land "
                         f"between them and the result is inaccurate; choose a step count that divides {T}, or "
                         "the ddim_uniform schedule.")
            return tuple(notes)
    if getattr(s, "sdlab_ends_at_sigma_min", False) and len(levels) > 1 and levels[-1] == levels[-2]:
        levels = levels[:-1]  # the zero-length last step of UniPC / DEIS
    if len(want) != len(levels):
        if schedule == "ddim_uniform" and len(want) > len(levels):
            notes.append(f"A1111 and ComfyUI run {len(want) - 1} steps for {label} with {steps} steps (timesteps "
                         f"range(1, {S.TrainingSchedule.of(s).num_train_timesteps}, "
                         f"{S.TrainingSchedule.of(s).num_train_timesteps // steps})); {type(s).__name__} can only "
                         f"be given a spacing and runs {len(levels) - 1}.")
        elif want[-1] > 0 and levels[-1] == 0:
            notes.append(f"A1111's {label} ends at sigma {want[-1]:.4g} without a last step to 0; "
                         f"{type(s).__name__} always takes that step, one more than A1111.")
        else:
            notes.append(f"{type(s).__name__} runs {len(levels) - 1} steps where A1111's {label} has {len(want) - 1}.")
        return tuple(notes)
    # the final level of DDIM / PLMS is alpha-bar of timestep 0 by design, as A1111's own DDIM / PLMS end
    body_want, body = want[:-1], levels[:-1]
    rel = np.max(np.abs(body - body_want) / np.maximum(body_want, 1e-12)) if len(body) else 0.0
    if rel > 1e-4:
        notes.append(f"{type(s).__name__} follows {label} only through diffusers' timestep spacing: its noise levels "
                     f"differ from A1111's by up to {rel:.2%} at {steps} steps.")
    return tuple(notes)
