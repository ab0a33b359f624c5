"""Sampler recipes: what a sampler and schedule name resolve to, as one frozen value, and the schedulers
that carry it in their config.

A :class:`Recipe` is (catalog entry, schedule, schedule parameters, model family). It is the one place
that knows a run's noise levels (``Recipe.levels``: A1111's formula, with the next-to-last sigma dropped
for DPM2 / DPM2 a / DPM++ 3M SDE and the sigma_min ending of UniPC / DEIS), its label, and how to build its
scheduler (``build``). ``recipe_of(scheduler)`` answers "which sampler is this?" for any scheduler: one
sdlab built, or a plain diffusers one, identified from its class and options (or "custom", with the reason).

State lives where diffusers keeps it (diffusers' ``ConfigMixin``: everything that decides ``step()`` is in
``self.config``). An sdlab-built scheduler's config holds its recipe (the private key ``_sdlab_recipe``,
which diffusers keeps across ``from_config`` of compatible classes without warnings) and diffusers' own
options set to what they mean: a Karras recipe says ``use_karras_sigmas=True``, an SGM Uniform one
``timestep_spacing="trailing"``. So ``type(s).from_config(s.config)``, ``save_config`` /
``from_pretrained``, pickle and deepcopy rebuild the same scheduler, and a plain diffusers class built from
that config runs diffusers' nearest version of the same schedule (rho 7, rounded timesteps).

Samplers whose diffusers class can be given noise levels run on ``Sdlab<Class>`` subclasses (importable
from ``sdlab``): their ``set_timesteps(n)`` runs the recipe's levels exactly, as explicit sigmas (Euler) or
through the class's own sigma-conversion step with fractional timesteps (the others), so the UNet is asked
about exactly the noise level each update assumes, as in k-diffusion (A1111 does not quantize by default:
its option enable_quantization is off). Samplers whose class takes only a timestep spacing (Euler a, DDIM,
PLMS, DDPM, LCM) are the plain diffusers classes with that spacing.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    SchedulerMixin,  # noqa: F401  (see below)
    UniPCMultistepScheduler,
)
from diffusers.configuration_utils import FrozenDict

# A pipeline saved with one of these schedulers names it as ["sdlab.recipes", "Sdlab...Scheduler"] in its
# model_index.json; diffusers' loader then looks for its loading method by the base classes this module has
# as attributes (pipeline_loading_utils.get_class_obj_and_candidates): SchedulerMixin above is that.

from . import checks
from .errors import InvalidArgument, SdlabError, WrongType
from . import conventions as C
from . import noise_schedules as S
from .sampler_catalog import (CATALOG, FLAGS, Sampler, check_params, diffusers_class, diffusers_scheduler_class,
                              is_variance_exploding, resolve)

CONFIG_KEY = "_sdlab_recipe"  # where a scheduler's config keeps its recipe
CUSTOM = S.CUSTOM
FAMILIES = ("sd1", "sd2", "sdxl", "toy")
Via = Literal["sdlab", "diffusers", "custom"]


@dataclass(frozen=True)
class Recipe:
    """A sampler, its schedule and the schedule's parameters, for one model family.

    via: how a scheduler realises it: "sdlab" (one of sdlab's classes runs A1111's levels exactly),
      "diffusers" (a plain diffusers class runs diffusers' own version: a flag such as use_karras_sigmas, or
      a timestep spacing), "custom" (no catalog entry or schedule matches; ``reason`` says why).
    """

    sampler: str  # the catalog's name; for a custom scheduler, its class
    schedule: str  # a concrete schedule name, or "custom"
    params: tuple[tuple[str, float], ...] = ()  # the schedule's parameters (rho, alpha, beta, ...), sorted
    family: str = "sd1"
    via: Via = "sdlab"
    reason: str = ""

    @classmethod
    def resolve(cls, sampler: str, schedule: str = S.AUTOMATIC, *, family: str = "sd1",
                params: Mapping[str, Any] | None = None) -> "Recipe":
        """The recipe of a sampler and schedule as a user wrote them ("DPM++ 2M", "Karras"), checked."""
        spec, concrete = resolve(sampler, schedule)
        checks.choice("family", family, FAMILIES)
        if params is not None and not isinstance(params, Mapping):
            raise WrongType(f"params must be a dict of schedule parameters such as {{'rho': 7.0}}, not "
                            f"{type(params).__name__}.", argument="params")
        params = {k: checks.number(f"params[{k!r}]", v) for k, v in (params or {}).items()}
        check_params(spec, concrete, params)
        return cls.of(spec, concrete, family=family, params=params)

    @classmethod
    def of(cls, spec: Sampler, schedule: str, *, family: str = "sd1", params: Mapping[str, Any] | None = None,
           via: Via | None = None) -> "Recipe":
        """The recipe of a catalog entry and a concrete schedule already resolved."""
        st = S.SCHEDULES.get(schedule)
        # only the schedule's own parameters, and only where they differ from its defaults: one recipe, one value
        own = {k: float(v) for k, v in (params or {}).items()
               if st is not None and k in st.params and float(v) != float(st.params[k])}
        if via is None:
            via = "diffusers" if spec.route == "spacing" else "sdlab"
        return cls(spec.name, schedule, tuple(sorted(own.items())), family if family in FAMILIES else "sd1", via)

    # -- what it is ---------------------------------------------------------------------------
    @property
    def entry(self) -> Sampler | None:
        """The catalog entry (None for a custom scheduler)."""
        return CATALOG.get(self.sampler)

    @property
    def schedule_params(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def is_custom(self) -> bool:
        return self.via == "custom"

    @property
    def has_formula(self) -> bool:
        """Whether its levels come from a schedule formula (not for a custom scheduler, nor LCM's own grid)."""
        return self.entry is not None and self.schedule in S.SCHEDULES

    @property
    def schedule_label(self) -> str:
        """The schedule as people see it: A1111's label ("Karras"), or "custom"."""
        return CUSTOM if self.schedule == CUSTOM else S.schedule_label(self.schedule)

    @property
    def schedule_text(self) -> str:
        """"Karras", or "Karras (rho=3)" where its parameters are not the defaults."""
        params = ", ".join(f"{k}={v:g}" for k, v in self.params)
        return self.schedule_label + (f" ({params})" if params else "")

    @property
    def label(self) -> str:
        """"DPM++ 2M, Karras"."""
        return f"{self.sampler}, {self.schedule_text}"

    def levels(self, n: int, training: S.TrainingSchedule | None = None) -> np.ndarray:
        """The noise levels A1111 runs for this sampler and schedule at n steps (``schedule_levels``);
        sdlab's own scheduler classes run exactly these."""
        entry = self.entry
        n = checks.whole("n", n, low=1, high=checks.MAX_STEPS, hint=" It is the number of steps.")
        if training is not None and not isinstance(training, S.TrainingSchedule):
            raise WrongType(f"training must be a TrainingSchedule (sdlab.TrainingSchedule.of(lab)) or None for "
                            f"Stable Diffusion's, not {type(training).__name__}.", argument="training")
        if not self.has_formula:
            raise InvalidArgument(f"{self.label} has no formula ({self.reason or 'a custom scheduler'}); "
                             "sdlab.plan(scheduler, n) reads the levels off the scheduler itself.")
        levels = schedule_levels(self.schedule, n, training or S.TrainingSchedule.stable_diffusion(), self.family,
                                 self.schedule_params, entry.discard_penultimate, entry.ends_at_sigma_min)
        body = levels[:-1] if levels[-1] == 0 else levels
        # the scheduler holds them in float32 and divides by their differences: each must be below the last there
        if not np.all(np.isfinite(levels)) or np.any(np.diff(body.astype(np.float32)) >= 0) or np.any(body <= 0):
            raise InvalidArgument(f"{self.label} at {n} steps gives noise levels that do not fall at every step "
                             f"({np.round(body[:6], 4).tolist()}...): a scheduler would repeat a level (a raw "
                             "IndexError or NaN). Choose other schedule parameters or fewer steps.")
        return levels

    # -- in a config --------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """What a scheduler's config keeps (JSON-safe): enough to rebuild it, nothing derived."""
        return {"sampler": self.sampler, "schedule": self.schedule, "params": dict(self.params),
                "family": self.family}

    @classmethod
    def from_config(cls, data: Any) -> "Recipe":
        """A recipe from a config's ``_sdlab_recipe``, checked as untrusted input: a known entry, a schedule
        it supports, finite parameters. Raises ValueError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"data ({CONFIG_KEY}) must be a mapping, not {type(data).__name__}.", argument="data")
        sampler, schedule = data.get("sampler"), data.get("schedule")
        params, family = data.get("params") or {}, data.get("family", "sd1")
        if not isinstance(sampler, str) or sampler not in CATALOG:
            raise InvalidArgument(f"data ({CONFIG_KEY}) names the sampler {sampler!r}, which is not in sdlab's catalog.",
                                  argument="data")
        if not isinstance(schedule, str) or schedule not in CATALOG[sampler].supported_schedules() \
                or (schedule == S.AUTOMATIC and CATALOG[sampler].default_schedule != S.AUTOMATIC):
            raise InvalidArgument(f"data ({CONFIG_KEY}) names the schedule {schedule!r}, which {sampler} cannot follow.",
                                  argument="data")
        if not isinstance(params, Mapping) or family not in FAMILIES:
            raise InvalidArgument(f"data ({CONFIG_KEY}) has bad params {params!r:.80} or family {family!r:.40}.",
                                  argument="data")
        try:
            check_params(CATALOG[sampler], schedule, dict(params))
        except SdlabError as exc:
            raise InvalidArgument(f"data ({CONFIG_KEY}): {exc}", argument="data") from None
        return cls.of(CATALOG[sampler], schedule, family=family, params=params)


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


# ---------------------------------------------------------------------------------------------------
# Schedulers that follow a recipe
# ---------------------------------------------------------------------------------------------------

# FollowsRecipe's start for VE samples: max(sigmas), exactly as diffusers computes it (a string, so that it
# survives pickle and deepcopy of a scheduler whose timesteps are set)
_LARGEST_SIGMA = "max(sigmas)"


class FollowsRecipe:
    """Mixin for a diffusers scheduler: ``set_timesteps(n)`` runs the noise levels of the recipe in its
    config. Without a recipe, or called with the caller's own sigmas or timesteps, it is the diffusers class."""

    def _recipe(self) -> Recipe | None:
        """The config's recipe, where it is one for this class (``recipe_of`` reports any other case)."""
        data = self.config.get(CONFIG_KEY)
        if data is None:
            return None
        try:
            recipe = Recipe.from_config(data)
        except SdlabError:
            return None
        # only where the config's own options still say it (what recipe_of checks too): one answer
        return recipe if _agrees(recipe, diffusers_class(self), self.config) else None

    def set_timesteps(self, num_inference_steps=None, device=None, *args, **kwargs):
        self.__dict__["_sdlab_start"] = None
        own = args or any(kwargs.get(k) is not None for k in ("sigmas", "timesteps"))
        recipe = None if own or num_inference_steps is None else self._recipe()
        if recipe is None:
            return super().set_timesteps(num_inference_steps, device, *args, **kwargs)
        levels = np.asarray(recipe.levels(num_inference_steps, S.TrainingSchedule.of(self)), dtype=np.float64)
        route = recipe.entry.route
        with self._through_the_door(route):
            if route == "sigmas":
                super().set_timesteps(device=device, sigmas=levels.tolist())
            else:
                # the class appends its own final level: 0, or (UniPC, DEIS) its last level once more, a
                # zero-length step whose UNet call only serves the corrector
                inner = levels[:-1] if levels[-1] == 0 else levels
                self.__dict__["_sdlab_pending"] = inner
                try:
                    super().set_timesteps(len(inner), device, **kwargs)
                finally:
                    self.__dict__["_sdlab_pending"] = None
                if not torch.is_floating_point(self.timesteps):  # DPM-Solver, UniPC, DEIS would round them
                    t = S.TrainingSchedule.of(self)._sigma_to_t(inner)
                    self.timesteps = torch.from_numpy(t).to(device=self.timesteps.device, dtype=torch.float32)
        # A1111's k-diffusion samplers start from sigma_0 x noise: as is for VE samples, in VP form for the others
        if is_variance_exploding(self):
            self.__dict__["_sdlab_start"] = _LARGEST_SIGMA
        elif recipe.entry.k_diffusion_start:
            self.__dict__["_sdlab_start"] = float(C.vp_sigma(levels[0]))  # sigma_0 x noise, in VP form

    @contextlib.contextmanager
    def _through_the_door(self, route: str):
        """For the length of one set_timesteps call, the config that makes the diffusers class take the
        recipe's levels: no sigma flag (explicit sigmas) or the exponential one, whose conversion step
        ``_convert_to_exponential`` hands over the levels; linspace spacing. The config itself stays as it is."""
        saved = self._internal_dict
        door = dict(saved)
        for flag in (*FLAGS, *_OTHER_SCHEDULES):
            if flag in door:
                door[flag] = route == "levels" and flag == "use_exponential_sigmas"
        door["timestep_spacing"] = "linspace"
        self._internal_dict = FrozenDict(door)
        try:
            yield
        finally:
            self._internal_dict = saved

    def _convert_to_exponential(self, in_sigmas, num_inference_steps):
        pending = self.__dict__.get("_sdlab_pending")
        if pending is not None:
            return np.array(pending)
        return super()._convert_to_exponential(in_sigmas, num_inference_steps)

    @property
    def init_noise_sigma(self):
        """What the pipeline multiplies the starting noise by: sigma_0 (in the sample's form) when the
        recipe's levels run, else the diffusers class's own."""
        start = self.__dict__.get("_sdlab_start")
        if start == _LARGEST_SIGMA:  # as the diffusers class computes it for linspace spacing
            return self.sigmas.max()
        if start is not None:
            return start
        own = inspect.getattr_static(diffusers_class(self), "init_noise_sigma", None)
        if isinstance(own, property):
            return own.fget(self)
        return self.__dict__.get("_init_noise_sigma", 1.0)

    @init_noise_sigma.setter
    def init_noise_sigma(self, value):  # VP classes set a number in __init__
        self.__dict__["_init_noise_sigma"] = value


def _doc(base: type) -> str:
    return (f"diffusers' {base.__name__} following the noise levels of the sdlab recipe in its config "
            f"(``{CONFIG_KEY}``); without one, exactly {base.__name__}.")


class SdlabEulerDiscreteScheduler(FollowsRecipe, EulerDiscreteScheduler):
    __doc__ = _doc(EulerDiscreteScheduler)


class SdlabHeunDiscreteScheduler(FollowsRecipe, HeunDiscreteScheduler):
    __doc__ = _doc(HeunDiscreteScheduler)


class SdlabLMSDiscreteScheduler(FollowsRecipe, LMSDiscreteScheduler):
    __doc__ = _doc(LMSDiscreteScheduler)


class SdlabKDPM2DiscreteScheduler(FollowsRecipe, KDPM2DiscreteScheduler):
    __doc__ = _doc(KDPM2DiscreteScheduler)


class SdlabKDPM2AncestralDiscreteScheduler(FollowsRecipe, KDPM2AncestralDiscreteScheduler):
    __doc__ = _doc(KDPM2AncestralDiscreteScheduler)


class SdlabDPMSolverSDEScheduler(FollowsRecipe, DPMSolverSDEScheduler):
    __doc__ = _doc(DPMSolverSDEScheduler)


class SdlabDPMSolverMultistepScheduler(FollowsRecipe, DPMSolverMultistepScheduler):
    __doc__ = _doc(DPMSolverMultistepScheduler)


class SdlabUniPCMultistepScheduler(FollowsRecipe, UniPCMultistepScheduler):
    __doc__ = _doc(UniPCMultistepScheduler)


class SdlabDEISMultistepScheduler(FollowsRecipe, DEISMultistepScheduler):
    __doc__ = _doc(DEISMultistepScheduler)


SCHEDULER_CLASSES: dict[str, type] = {c.__name__: c for c in FollowsRecipe.__subclasses__()}
_FOLLOWING: dict[str, type] = {diffusers_class(c).__name__: c for c in SCHEDULER_CLASSES.values()}


# What a scheduler config from outside (a file's settings) may hold: diffusers allocates and loops over these
# numbers when it builds the scheduler (one entry per training timestep), so they are bounded before it does.
_CONFIG_RANGES: dict[str, tuple[float, float, bool]] = {  # key: (lowest, highest, whole number)
    "num_train_timesteps": (1, 10_000, True), "steps_offset": (0, 10_000, True), "solver_order": (1, 3, True),
    "beta_start": (0.0, 1.0, False), "beta_end": (0.0, 1.0, False), "noise_sampler_seed": (0, 2 ** 63 - 1, True),
    "sample_max_value": (0.0, 1e6, False), "dynamic_thresholding_ratio": (0.0, 1.0, False)}


_CONFIG_CHOICES = {"timestep_spacing": ("linspace", "leading", "trailing"),
                   "prediction_type": ("epsilon", "v_prediction", "sample"),
                   "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2")}


def check_scheduler_config(config: Any) -> Mapping:
    """A scheduler config from outside (``Settings.scheduler_config`` read from a file) checked before anything
    is built from it: its class is a scheduler (``scheduler_class``), its sizes and numbers are in range, its
    recipe (if any) is one. Raises ValueError naming the key."""
    if not isinstance(config, Mapping):
        raise InvalidArgument(f"scheduler_config must be a dict (a diffusers scheduler config), not {type(config).__name__}.")
    scheduler_class(config.get("_class_name"))
    for key, (lo, hi, whole) in _CONFIG_RANGES.items():
        v = config.get(key)
        if v is None:
            continue
        # (DPM++ SDE's noise_sampler_seed may be one seed per image of a batch, as diffusers' BatchedBrownianTree takes)
        values = v if key == "noise_sampler_seed" and isinstance(v, (list, tuple)) and 1 <= len(v) <= 4096 else [v]
        for x in values:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi \
                    or (whole and int(x) != x):
                kind = "a whole number" if whole else "a number"
                raise InvalidArgument(f"scheduler_config[{key!r}] is {v!r}; it must be {kind} from {lo:g} to {hi:g}.")
    for key, choices in _CONFIG_CHOICES.items():
        if key in config and config[key] not in choices:
            raise InvalidArgument(f"scheduler_config[{key!r}] is {config[key]!r}; it must be one of {', '.join(choices)}.")
    betas = config.get("trained_betas")
    if betas is not None:
        if not isinstance(betas, (list, tuple)) or not 1 <= len(betas) <= _CONFIG_RANGES["num_train_timesteps"][1] \
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas):
            raise InvalidArgument("scheduler_config['trained_betas'] must be a list of 1 to 10000 numbers between 0 and 1.")
    if CONFIG_KEY in config:
        Recipe.from_config(config[CONFIG_KEY])
    return config


def scheduler_class(name: str) -> type:
    """A scheduler class by the name a config gives (``_class_name``): diffusers' own or sdlab's.
    Nothing else is looked up, so a config from a file cannot name arbitrary code."""
    import diffusers
    from diffusers import SchedulerMixin

    cls = SCHEDULER_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str) and not name.startswith("_"):
        cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise InvalidArgument(f"{name!r} is not a diffusers scheduler class (nor one of sdlab's: "
                         f"{', '.join(SCHEDULER_CLASSES)}).")
    return cls


# ---------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------

# Known pitfalls, set explicitly whatever the previous scheduler had: DDIM's clip_sample / set_alpha_to_one
# (diffusers issues 706, 1545, 6068), DPM-Solver++'s final sigma (issue 6295, PR 6477), lower_order_final
# (issue 5433); an entry's own options may differ on purpose (UniPC's final sigma).
_PITFALLS = {"clip_sample": False, "set_alpha_to_one": False, "final_sigmas_type": "zero", "lower_order_final": True,
             "euler_at_final": False, "use_flow_sigmas": False, "thresholding": False}


# diffusers options that replace the noise levels with another schedule altogether (DPM-Solver's lu-lambdas,
# flow-matching sigmas): off in every recipe, and a scheduler with one on runs no catalog schedule
_OTHER_SCHEDULES = ("use_lu_lambdas", "use_flow_sigmas")
_PRECEDENCE = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


def schedule_options(schedule: str, cls: type) -> dict[str, Any]:
    """The diffusers options that say ``schedule`` on a scheduler of class ``cls``: its flag
    (use_karras_sigmas, ...) where diffusers has one, else its timestep spacing; the model's uniform
    spacing for schedules diffusers cannot express (Align Your Steps, KL Optimal, ...)."""
    init = _init_params(cls)
    out: dict[str, Any] = {flag: False for flag in (*FLAGS, *_OTHER_SCHEDULES) if flag in init}
    st = S.SCHEDULES.get(schedule)
    if st is None:  # LCM's "automatic": its own training grid, whatever the options
        return out
    if st.flag is not None and st.flag in init:
        out[st.flag] = True
        out["timestep_spacing"] = "linspace"
    elif st.spacing is not None:
        out["timestep_spacing"], offset = st.spacing
        if offset is not None:
            out["steps_offset"] = offset
    else:
        out["timestep_spacing"] = "linspace"
    return out


def build(recipe: Recipe, base: Mapping, *, seed: int | None = None, **options: Any):
    """The scheduler of ``recipe``, built from the model's scheduler config ``base`` (training betas,
    prediction type, ... kept). ``seed`` seeds a scheduler's own noise (DPM++ SDE's Brownian tree), as A1111
    seeds it with the image seed; ``options`` are diffusers options of the class (solver_order=3, ...)."""
    spec = recipe.entry
    if spec is None:
        raise InvalidArgument(f"{recipe.label} is custom: it has no catalog entry to build from.")
    check_params(spec, recipe.schedule, options)
    diffusers_cls = diffusers_scheduler_class(spec.scheduler_class)
    init = _init_params(diffusers_cls)
    overrides: dict[str, Any] = {k: v for k, v in _PITFALLS.items() if k in init}
    overrides.update(spec.options)
    if seed is not None and "noise_sampler_seed" in init:  # (a list: one Brownian tree per image of a batch)
        overrides["noise_sampler_seed"] = [int(x) for x in seed] if isinstance(seed, (list, tuple)) else int(seed)
    overrides.update(schedule_options(recipe.schedule, diffusers_cls))
    overrides.update(options)
    cls = _FOLLOWING[diffusers_cls.__name__] if spec.route != "spacing" else diffusers_cls
    # Only what this class takes: from_config would log every foreign key of the model's old scheduler.
    # "_use_default_values" would make from_config drop keys the old class had at their defaults, even
    # when the config was edited since (prediction_type set to v_prediction, say): the config is the truth.
    config = {k: v for k, v in base.items() if k in init or (k.startswith("_") and k not in
                                                             ("_use_default_values", CONFIG_KEY))}
    config[CONFIG_KEY] = recipe.to_config()
    scheduler = cls.from_config(config, **overrides)
    check_scheduler_config({**scheduler.config, "_class_name": type(scheduler).__name__})  # a saved run can rebuild it
    return scheduler


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

    The result's config holds its recipe (``sdlab.recipe_of`` reads it back) and diffusers' own options for
    the same schedule, so it survives ``from_config``, ``save_pretrained``, pickle and deepcopy.
    """
    spec, concrete = resolve(sampler, schedule)
    check_params(spec, concrete, params)
    if family is not None:
        checks.choice("family", family, FAMILIES)
    if seed is not None:
        seed = checks.whole("seed", seed, low=0, high=2 ** 63 - 1)
    base, lab_family = _base_config(config_or_scheduler)
    st = S.SCHEDULES.get(concrete)
    schedule_params = {k: params.pop(k) for k in list(params) if st is not None and k in st.params}
    recipe = Recipe.of(spec, concrete, family=family or lab_family or "sd1", params=schedule_params)
    return build(recipe, base, seed=seed, **params)


def _base_config(config_or_scheduler) -> tuple[dict, str | None]:
    """The config to build from, and the model family when a lab says it (a lab is recognised by its
    ``default_scheduler``, so this module needs nothing from sdlab.models)."""
    family = None
    if hasattr(config_or_scheduler, "default_scheduler"):
        family = getattr(config_or_scheduler, "family", None)
        config_or_scheduler = config_or_scheduler.default_scheduler
    config = getattr(config_or_scheduler, "config", config_or_scheduler)
    if not isinstance(config, Mapping):
        raise WrongType("config_or_scheduler must be a scheduler config (dict), a diffusers scheduler or an sdlab Lab, "
                        f"not {type(config_or_scheduler).__name__}.", argument="config_or_scheduler")
    return dict(config), family


# ---------------------------------------------------------------------------------------------------
# Which sampler is this scheduler?
# ---------------------------------------------------------------------------------------------------

def recipe_of(scheduler) -> Recipe:
    """The recipe a scheduler runs: the one in its config where its class and options still say it, else
    the catalog entry and schedule its diffusers class and options compute (``via="diffusers"``), else
    ``via="custom"`` with the reason."""
    checks.scheduler("scheduler", scheduler)
    if not isinstance(scheduler.config, Mapping):
        raise WrongType(f"scheduler must be a diffusers scheduler, not {type(scheduler).__name__}.", argument="scheduler")
    config = scheduler.config
    base = diffusers_class(scheduler)
    stored = config.get(CONFIG_KEY)
    if stored is not None:
        try:
            recipe = Recipe.from_config(stored)
        except SdlabError:
            recipe = None
        if recipe is not None and _agrees(recipe, base, config):
            sdlab_runs = isinstance(scheduler, FollowsRecipe) and recipe.entry.route != "spacing"
            # a plain class runs a schedule diffusers has an option for; others it runs as uniform (below)
            st = S.SCHEDULES.get(recipe.schedule)
            if sdlab_runs or st is None or st.flag is not None or st.spacing is not None:
                # diffusers' own version has no parameters (rho 7, alpha = beta = 0.6): only sdlab's runs them
                return Recipe.of(recipe.entry, recipe.schedule, family=recipe.family,
                                 params=recipe.schedule_params if sdlab_runs else None,
                                 via="sdlab" if sdlab_runs else "diffusers")
    return _identify(base, config)


def entry_options(spec: Sampler, cls: type) -> dict[str, Any]:
    """The options that make a diffusers class compute a catalog entry: the entry's own, and where the
    class has one, the final level (a step to 0, unless the entry stops at sigma_min as UniPC and DEIS do)."""
    out = {"final_sigmas_type": "zero"} if "final_sigmas_type" in _init_params(cls) else {}
    return {**out, **spec.options}


def _agrees(recipe: Recipe, base: type, config: Mapping) -> bool:
    """Whether a scheduler of class ``base`` with ``config`` still runs ``recipe``'s sampler and schedule."""
    spec = recipe.entry
    if spec.scheduler_class != base.__name__:
        return False
    wanted = {**entry_options(spec, base), **schedule_options(recipe.schedule, base)}
    init = _init_params(base)
    return all(_same(config.get(k), v) for k, v in wanted.items() if k in init)


def _identify(base: type, config: Mapping) -> Recipe:
    """Catalog entry and schedule from a diffusers class and its options alone."""
    init = _init_params(base)
    candidates = [e for e in CATALOG.values() if e.scheduler_class == base.__name__]
    if not candidates:
        return Recipe(base.__name__, CUSTOM, via="custom",
                      reason=f"no catalog sampler runs {base.__name__}")
    wants = {e.name: entry_options(e, base) for e in candidates}
    matching = [e for e in candidates if all(_same(config.get(k), v) for k, v in wants[e.name].items())]
    if not matching:
        nearest = max(candidates, key=lambda e: sum(_same(config.get(k), v) for k, v in wants[e.name].items()))
        off = ", ".join(f"{k}={config.get(k)!r} (the catalog's: {v!r})" for k, v in wants[nearest.name].items()
                        if not _same(config.get(k), v))
        return Recipe(base.__name__, CUSTOM, via="custom",
                      reason=f"{base.__name__} with {off} is no catalog sampler; nearest: {nearest.name}")
    spec = max(matching, key=lambda e: len(e.options))  # the most specific: DPM++ 2M SDE Heun over DPM++ 2M SDE
    if spec.default_schedule == S.AUTOMATIC:  # LCM: its own grid
        return Recipe.of(spec, S.AUTOMATIC, via="diffusers")
    # the first option on decides, in the order diffusers' set_timesteps tries them (DPM-Solver's: Karras,
    # lu-lambdas, exponential, beta, flow)
    flags = [f for f in _PRECEDENCE if f in init and config.get(f)][:1]
    if flags and flags[0] in _OTHER_SCHEDULES:
        return Recipe(spec.name, CUSTOM, via="custom", reason=f"{flags[0]}=True is no A1111 or ComfyUI schedule")
    spacing = config.get("timestep_spacing", "linspace" if "timestep_spacing" not in init else None)
    schedule, why = None, ""
    if flags:
        schedule = next((st.name for st in S.SCHEDULES.values() if st.flag == flags[0]), None)
    elif spacing == "linspace":
        schedule = "uniform"
    elif spacing == "trailing":
        schedule = "sgm_uniform"  # (ComfyUI's simple is the same spacing)
    elif spacing == "leading" and config.get("steps_offset") == 1:
        schedule = "ddim_uniform"
    else:
        why = (f"timestep_spacing={spacing!r} with steps_offset={config.get('steps_offset')!r} is no A1111 or "
               "ComfyUI schedule")
    if schedule is not None and schedule not in spec.supported_schedules():
        why, schedule = f"{spec.name} cannot follow {schedule}", None
    if schedule is None:
        return Recipe(spec.name, CUSTOM, via="custom", reason=why)
    return Recipe.of(spec, schedule, via="diffusers")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b))
        except (TypeError, ValueError):
            return False
    return a == b


def _init_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


