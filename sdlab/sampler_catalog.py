"""Samplers by the names users know (A1111, ComfyUI, diffusers): the catalog and its name resolution.

A name means what A1111 means by it (A1111's modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py
and sd_schedulers.py; ComfyUI's comfy/samplers.py for its names). Each entry names the diffusers scheduler
class and options that compute it, how far it matches A1111 (``fidelity``), and what its schedule does:
A1111 and ComfyUI drop the next-to-last sigma for DPM2 and DPM2 a (A1111 for DPM++ 3M SDE too), and
A1111's k-diffusion samplers start from sigma_0 x noise. A sampler's class decides how it can be made to
follow a schedule (``Sampler.route``):

- ``sigmas``: Euler takes explicit sigmas in ``set_timesteps``.
- ``levels``: schedulers with diffusers' sigma-conversion options (Heun, LMS, DPM2, DPM2 a, DPM++ SDE,
  DPM-Solver, UniPC, DEIS) are given the levels through that conversion step.
- ``spacing``: the rest (Euler a, DDIM, PLMS, DDPM) take only a timestep spacing; they follow the
  timestep schedules (uniform, sgm_uniform, simple, ddim_uniform), and where diffusers' spacing differs
  from A1111's formula for that step count the plan says by how much.

Names from either tool that no diffusers scheduler implements are refused with the reason and the nearest
choice. Building the scheduler of a resolved name is ``sdlab.recipes``' job; reporting what it does,
``sdlab.plans``'.
"""
from __future__ import annotations

import difflib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np

from .errors import InvalidArgument, WrongType
from . import noise_schedules as S

# DPMSolverSDEScheduler builds its Brownian tree on [sigma_min, sigma_max] as Python floats and then queries
# it at float32 sigmas, which round up to 1e-7 outside the interval; torchsde clamps such a query to the
# interval and warns at every step (torchsde/_brownian/brownian_interval.py). Only that warning is hidden.
warnings.filterwarnings("ignore", message=r"Should have t\w* ?[<>]=t[01] but got", category=UserWarning,
                        module=r"torchsde\._brownian")

Route = Literal["sigmas", "levels", "spacing"]
FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


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
        return _route(diffusers_scheduler_class(self.scheduler_class))

    def supported_schedules(self) -> list[str]:
        """The schedule types this sampler can follow."""
        if self.name == "LCM":  # LCM picks timesteps from its own 50-step training grid
            return [S.AUTOMATIC]
        route = self.route
        return [S.AUTOMATIC] + [st.name for st in S.SCHEDULES.values() if st.sampleable and (
            route != "spacing" or (st.spacing is not None and (self.scheduler_class, st.name) not in REFUSED_SCHEDULES))]


# How close "the same latents" is, as tests/test_fidelity.py checks it: the largest difference from k-diffusion's
# result relative to its largest latent. Measured on the tiny model: at most 3e-6 on 1 and on 2 threads (the
# same float32 UNet, its input scaled in another order: VE on one side, VP on the other), so 2e-5 leaves a
# margin of 7 and still catches a wrong step (which differs by 1e-2 or more).
FIDELITY_RTOL = 2e-5
# LMS (fourth order) on a schedule that crowds its first levels amplifies those float32 differences: its update
# over the next level sums Lagrange coefficients of up to 2000 times the step (linear_quadratic at 5 steps, two
# of its levels within 1.3 % of sigma_max); measured 4e-5 to 9e-5 over seeds and thread counts.
LMS_CROWDED_RTOL = 5e-4
LMS_CROWDED_GAIN = 100.0  # the noise gain above which a schedule counts as crowded for LMS

_SAME = ("k-diffusion's sampler on the same noise levels, from the same noise, gives the same latents (within "
         f"{FIDELITY_RTOL:g} of the largest latent, tests)")
_SDE_NOISE = ("the noise it adds differs: A1111 and ComfyUI draw it from a Brownian tree seeded with the image "
              "seed, diffusers from the pipeline's generator, so a seed gives another picture")
_SAME_UPDATE = ("Schedule and update are A1111's: given the same noise, k-diffusion's sampler gives the same latents "
                "(within 1e-4 of the largest latent, tests)")

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
                     "image seed): from the same starting noise, A1111's latents (measured 1e-6 on Exponential, 3e-4 "
                     "on Karras, whose float32 sigmas query the tree at times 1e-7 apart; the tests allow 1e-3). "
                     "Needs torchsde.",
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
            fidelity=f"{_SAME} (sample_lms, order 4). On a schedule that crowds its first levels (linear_quadratic at "
                     "few steps) its fourth-order update amplifies float32 rounding up to 2000-fold, and the latents "
                     f"differ by up to 1e-4 (tests allow {LMS_CROWDED_RTOL:g}), as they would between two runs of A1111 "
                     "on different hardware."),
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
    (("DPM++ 2S a", "dpmpp_2s_ancestral", "k_dpmpp_2s_a", "k_dpmpp_2s_ancestral", "k_dpmpp_2s_a_ka"),
     f"{_NO_DIFFUSERS} (DPM-Solver++(2S) ancestral; diffusers' singlestep DPM-Solver is deterministic)",
     "DPM++ 2M SDE (stochastic, second order) or Euler a"),
    (("dpmpp_2s_ancestral_cfg_pp",), _CFGPP, "DPM++ 2M SDE"),
    (("DPM fast", "dpm_fast", "k_dpm_fast"), f"{_NO_DIFFUSERS} (k-diffusion's sample_dpm_fast)", "DPM++ 2M"),
    (("DPM adaptive", "dpm_adaptive", "k_dpm_ad"), f"{_NO_DIFFUSERS} (k-diffusion's adaptive-step sample_dpm_adaptive)",
     "DPM++ 2M"),
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

# A1111's older names for its k-diffusion samplers (its API and infotexts of 2022-23, also NovelAI's and AI
# Horde's): k_<name>, and k_<name>_ka for the Karras version.
K_NAMES = {"k_euler": "Euler", "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "k_lms": "LMS",
           "k_heun": "Heun", "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpm_2_ancestral": "DPM2 a",
           "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE", "k_dpmpp_2m_sde": "DPM++ 2M SDE", "k_lcm": "LCM"}
for _k, _name in list(K_NAMES.items()):
    _LOOKUP.setdefault(_norm(_k), _name)
_K_KARRAS = {_norm(_k + "_ka"): _name for _k, _name in K_NAMES.items()}


def samplers() -> list[Sampler]:
    """Every sampler sdlab offers: A1111 label, ComfyUI names, diffusers class and options, order,
    stochasticity, default schedule, and whether (and why not) it matches A1111."""
    return list(CATALOG.values())


def parse_sampler(name: str) -> tuple[Sampler, str | None]:
    """Resolve a sampler name as A1111, ComfyUI or diffusers writes it. A legacy A1111 name with the
    schedule in it ("DPM++ 2M Karras") comes back split: (DPM++ 2M, "karras")."""
    if isinstance(name, Sampler):
        return name, None
    if not isinstance(name, str):
        raise WrongType(f"sampler must be a name (a string) such as 'DPM++ 2M' or 'euler_ancestral', not {name!r:.60}.",
                        argument="sampler")
    if not name.strip():
        raise InvalidArgument("sampler is empty: name one, such as 'DPM++ 2M' or 'euler_ancestral'.", argument="sampler")
    key = _norm(name)
    if key in _LOOKUP:
        return CATALOG[_LOOKUP[key]], None
    if key in _K_KARRAS:
        return CATALOG[_K_KARRAS[key]], "karras"
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
        raise InvalidArgument(f"The sampler {name!r} cannot run in sdlab: {u.reason}. Nearest: {u.nearest}.",
                              argument="sampler")
    close = difflib.get_close_matches(key, list(_LOOKUP), n=1, cutoff=0.5)
    hint = f" Closest match: {_LOOKUP[close[0]]!r}." if close else ""
    raise InvalidArgument(f"Unknown sampler {name!r}.{hint} Valid samplers: {', '.join(CATALOG)} "
                     "(ComfyUI names like 'dpmpp_2m' and diffusers class names work too).")


def resolve(sampler: str, schedule: str = S.AUTOMATIC) -> tuple[Sampler, str]:
    """(catalog entry, concrete schedule name) for a sampler and schedule as a user wrote them.

    Raises ValueError for unknown names, conflicting schedules and impossible combinations."""
    spec, legacy = parse_sampler(sampler)
    requested = S.resolve_schedule(schedule)
    if legacy is not None and requested not in (S.AUTOMATIC, legacy):
        raise InvalidArgument(f"Sampler {sampler!r} already names the {legacy!r} schedule, but schedule={schedule!r} "
                         f"was also given. Use sampler={spec.name!r} with the schedule you want.")
    name = legacy or requested
    concrete = spec.default_schedule if name == S.AUTOMATIC else name
    supported = spec.supported_schedules()
    if concrete not in supported:
        why = REFUSED_SCHEDULES.get((spec.scheduler_class, concrete))
        reason = f": {why}" if why else ""
        raise InvalidArgument(f"{spec.name} ({spec.scheduler_class}) cannot follow the {concrete!r} schedule{reason}. "
                         f"Schedules it supports: {', '.join(supported)}.")
    return spec, concrete


def diffusers_class(scheduler_or_class) -> type:
    """The diffusers class of a scheduler or class: itself, or for sdlab's subclasses (``sdlab.recipes``)
    the diffusers class they follow."""
    import diffusers

    cls = scheduler_or_class if isinstance(scheduler_or_class, type) else type(scheduler_or_class)
    for c in cls.__mro__:
        if getattr(diffusers, c.__name__, None) is c:
            return c
    return cls


def is_variance_exploding(scheduler) -> bool:
    """True for k-diffusion-style schedulers (Euler, Heun, LMS, DPM2, ...): their samples are x0 + sigma eps
    and their scale_model_input divides by sqrt(sigma^2 + 1). False for DDIM, DPM-Solver, UniPC, DEIS, PLMS,
    DDPM, LCM, which keep variance-preserving samples sqrt(abar) x0 + sqrt(1 - abar) eps. Read off the
    diffusers class: the former compute init_noise_sigma from their sigmas (a property), the latter keep a number."""
    return isinstance(inspect.getattr_static(diffusers_class(scheduler), "init_noise_sigma", None), property)


def _route(cls) -> Route:
    params = inspect.signature(cls.set_timesteps).parameters
    if "sigmas" in params and cls.__name__ == "EulerDiscreteScheduler":  # (UniPC's sigmas are for flow models)
        return "sigmas"
    if "use_exponential_sigmas" in inspect.signature(cls.__init__).parameters and hasattr(cls, "_convert_to_exponential"):
        return "levels"
    return "spacing"


def diffusers_scheduler_class(name: str):
    """A diffusers scheduler class by its name (the catalog's ``scheduler_class``)."""
    import diffusers

    return getattr(diffusers, name)


def check_params(spec: Sampler, concrete: str, params: Mapping[str, Any]) -> None:
    """Refuse parameters that neither the schedule nor the sampler's scheduler class takes, and schedule
    parameters that are not finite numbers, naming what is accepted."""
    st = S.SCHEDULES.get(concrete)
    own = dict(st.params) if st is not None else {}
    init = set(inspect.signature(diffusers_scheduler_class(spec.scheduler_class).__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(k for k in params if k not in own and k not in init)
    if unknown:
        raise InvalidArgument(f"{unknown} are neither parameters of the {concrete!r} schedule (it takes "
                         f"{', '.join(own) or 'none'}) nor options of {spec.scheduler_class} (it takes "
                         f"{', '.join(sorted(init))}).")
    for key in own:
        value = params.get(key, own[key])
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value) or value <= 0:
            raise InvalidArgument(f"The {concrete!r} schedule's {key} must be a finite number > 0 (default {own[key]}), "
                             f"not {value!r}.")

