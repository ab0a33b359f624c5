"""Noise schedules as data: pure functions from step count to sigmas, and a model's training schedule.

Every schedule returns the noise levels a sampler moves through, from high noise to low, ending with the
final one: ``n + 1`` levels ending with an appended 0 (as in k-diffusion) for most. The exceptions are as
their sources compute them: A1111's KL Optimal ends at sigma_min (no 0), ddim_uniform has more than n
levels when n does not divide the training steps, and ComfyUI's beta fewer when rounding merges timesteps.

Formulas are A1111's (modules/sd_schedulers.py) and k-diffusion's (k_diffusion/sampling.py), which A1111
calls. Where ComfyUI (comfy/samplers.py) computes something else under the same name (beta, kl_optimal),
the name means A1111's, and ComfyUI's has its own (beta_comfyui, kl_optimal_comfyui). Each function names
its source. Nothing here needs a diffusers pipeline: numpy (and scipy for the beta schedules) only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import numpy as np

from . import checks
from .errors import InvalidArgument, WrongType
from .conventions import vp_scale  # noqa: F401  (sqrt(alphabar) at a noise level; written once there)

# Align Your Steps (NVIDIA, Sabour et al. 2024): 10-step noise levels, as published for SD 1.5 and SDXL.
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def _append_zero(s: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(s, dtype=np.float64), [0.0]])


def _check_n(n: int) -> int:
    return checks.whole("n", n, low=1, high=checks.MAX_STEPS, hint=" It is the number of steps.")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    sigma_min = checks.number("sigma_min", sigma_min, low=0, low_open=True)
    sigma_max = checks.number("sigma_max", sigma_max, low=0, low_open=True)
    if not sigma_min < sigma_max:
        raise InvalidArgument(f"Need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.",
                              argument="sigma_min")


# ---------------------------------------------------------------------------------------------------
# The model's training schedule (a VP / DDPM discretisation) and conversions
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingSchedule:
    """A model's discrete training schedule: alpha-bar per training timestep, and conversions.

    sigma_t = sqrt((1 - alphabar_t) / alphabar_t); SNR = 1 / sigma^2; log-SNR = -2 log sigma.
    """

    alphas_cumprod: np.ndarray = field(repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TrainingSchedule":
        """From a diffusers scheduler config (beta_start, beta_end, beta_schedule, num_train_timesteps, ...).

        Computed in float32 like diffusers' schedulers, so the numbers match theirs exactly.
        """
        if not isinstance(config, Mapping):
            raise WrongType(f"config must be a diffusers scheduler config (a dict such as scheduler.config), not "
                            f"{type(config).__name__}.", argument="config")
        T = checks.whole("config['num_train_timesteps']", config.get("num_train_timesteps", 1000), low=2, high=100_000)
        kind = config.get("beta_schedule", "linear")
        b0 = checks.number("config['beta_start']", config.get("beta_start", 0.0001), low=0, high=1)
        b1 = checks.number("config['beta_end']", config.get("beta_end", 0.02), low=0, high=1)
        if config.get("trained_betas") is not None:
            betas = checks.reals("config['trained_betas']", config["trained_betas"], low=0, high=1,
                                 max_size=100_000).astype(np.float32)
        elif kind == "linear":
            betas = np.linspace(b0, b1, T, dtype=np.float32)
        elif kind == "scaled_linear":  # "scaled_linear" is what Stable Diffusion was trained with
            betas = np.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=np.float32) ** 2
        elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, cosine schedule
            f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float32)
        else:
            raise InvalidArgument(f"config: unknown beta_schedule {kind!r:.40}: expected linear, scaled_linear or "
                                  "squaredcos_cap_v2.", argument="config")
        alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
        if config.get("rescale_betas_zero_snr"):  # Lin et al. 2023, "Common Diffusion Noise Schedules ... are Flawed"
            s = np.sqrt(alphas_cumprod.astype(np.float64))
            s0, sT = s[0], s[-1]
            s = (s - sT) * s0 / (s0 - sT)
            alphas_cumprod = np.maximum(s ** 2, 2 ** -24).astype(np.float32)
        return cls(alphas_cumprod.astype(np.float64))

    @classmethod
    def of(cls, source=None) -> "TrainingSchedule":
        """The training schedule of ``source``: a lab (its model's own scheduler config), a diffusers
        scheduler (its alphas_cumprod), a scheduler config (a mapping), a TrainingSchedule, or None
        (Stable Diffusion's). Recognised by what they have, so nothing here imports a model."""
        if source is None:
            return cls.stable_diffusion()
        if isinstance(source, TrainingSchedule):
            return source
        if hasattr(source, "default_scheduler"):  # an sdlab Lab
            return cls.from_config(source.default_scheduler.config)
        if hasattr(source, "alphas_cumprod"):  # a diffusers scheduler
            ab = source.alphas_cumprod
            return cls(np.asarray(ab.double().cpu().numpy() if hasattr(ab, "double") else ab, dtype=np.float64))
        if isinstance(source, Mapping):
            return cls.from_config(source)
        raise WrongType(f"A training schedule (source, model) comes from a lab, a diffusers scheduler, a scheduler "
                        f"config or None (Stable Diffusion's), not {type(source).__name__}.", argument="source")

    @classmethod
    def stable_diffusion(cls) -> "TrainingSchedule":
        """SD 1.x / 2.x / SDXL: scaled_linear betas 0.00085 .. 0.012 over 1000 steps."""
        return cls.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                "num_train_timesteps": 1000})

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigmas(self) -> np.ndarray:
        """sigma for training timesteps 0 .. T-1 (increasing)."""
        return sigma_from_alpha_bar(self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t) -> np.ndarray:
        """Sigma at (fractional) timesteps, interpolating log sigma (k-diffusion's DiscreteSchedule.t_to_sigma)."""
        return self._t_to_sigma(checks.reals("t", t, low=0, high=self.num_train_timesteps - 1, keep_shape=True))

    def _t_to_sigma(self, t: np.ndarray) -> np.ndarray:  # (sdlab's own callers: checked values, hot loops)
        return np.exp(np.interp(t, np.arange(self.num_train_timesteps),
                                np.log(self.sigmas)))

    def sigma_to_t(self, sigma) -> np.ndarray:
        """Fractional timestep of a sigma, interpolating in log sigma (diffusers' / k-diffusion's sigma_to_t)."""
        return self._sigma_to_t(checks.reals("sigma", sigma, low=0, keep_shape=True))

    def _sigma_to_t(self, sigma: np.ndarray) -> np.ndarray:  # (sdlab's own callers: checked values, hot loops)
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        return np.interp(log_sigma, np.log(self.sigmas), np.arange(self.num_train_timesteps, dtype=np.float64))


def sigma_from_alpha_bar(ab) -> np.ndarray:
    """sigma = sqrt((1 - alphabar) / alphabar): the variance-exploding noise level of a training alpha-bar."""
    ab = np.asarray(ab, dtype=np.float64)
    return np.sqrt((1 - ab) / ab)


def alpha_bar(sigma) -> np.ndarray:
    """alphabar = 1 / (1 + sigma^2), the signal fraction of x_t = sqrt(ab) x0 + sqrt(1-ab) eps."""
    return 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


def snr(sigma) -> np.ndarray:
    """Signal-to-noise ratio alphabar / (1 - alphabar) = 1 / sigma^2 (inf at sigma 0)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.asarray(sigma, dtype=np.float64) ** 2


def log_snr(sigma) -> np.ndarray:
    """log SNR = -2 log sigma (lambda in the DPM-Solver papers)."""
    with np.errstate(divide="ignore"):
        return -2.0 * np.log(np.asarray(sigma, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------
# Schedules that need only sigma_min and sigma_max
# ---------------------------------------------------------------------------------------------------

def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma^(1/rho)."""
    n = _check_n(n)
    _check_range(sigma_min, sigma_max)
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Evenly spaced in log sigma (k-diffusion get_sigmas_exponential)."""
    n = _check_n(n)
    _check_range(sigma_min, sigma_max)
    return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> np.ndarray:
    """Polynomial in log sigma (k-diffusion get_sigmas_polyexponential); rho=1 is exponential."""
    n = _check_n(n)
    _check_range(sigma_min, sigma_max)
    ramp = np.linspace(1, 0, n) ** rho
    return _append_zero(np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> np.ndarray:
    """Continuous VP-SDE schedule (Song et al. 2021; k-diffusion get_sigmas_vp). Its own sigma range."""
    n = _check_n(n)
    t = np.linspace(1, eps_s, n)
    return _append_zero(np.sqrt(np.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """KL-optimal schedule (Sahoo et al. 2024), as A1111 computes it (modules/sd_schedulers.py, PR 15608):
    n+1 levels evenly spaced in arctan(sigma) from sigma_max to sigma_min, with no 0 appended, so the
    last step ends at sigma_min."""
    n = _check_n(n)
    _check_range(sigma_min, sigma_max)
    w = np.arange(n + 1) / n
    return np.tan(w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max))


def kl_optimal_comfyui(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """ComfyUI's kl_optimal (comfy/samplers.py kl_optimal_scheduler): n levels evenly spaced in
    arctan(sigma) from sigma_max to sigma_min, then 0."""
    n = _check_n(n)
    _check_range(sigma_min, sigma_max)
    w = np.arange(n) / max(n - 1, 1)
    return _append_zero(np.tan(w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)))


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Beta-distribution schedule (Lee et al. 2024, arXiv:2407.12173) as A1111 computes it
    (modules/sd_schedulers.py beta_scheduler) and diffusers' use_beta_sigmas does: the beta quantiles
    placed between sigma_max and sigma_min in sigma. ComfyUI's beta places them on training timesteps
    instead: ``beta_comfyui``."""
    import scipy.stats

    n = _check_n(n)
    _check_range(sigma_min, sigma_max)
    q = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return _append_zero(sigma_min + q * (sigma_max - sigma_min))


def beta_comfyui(n: int, model: "TrainingSchedule | None" = None, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """ComfyUI's beta (comfy/samplers.py beta_scheduler): the quantiles of 1 - linspace(0, 1, n, endpoint
    False) placed on the training timesteps (rounded; repeats merged, so it can have fewer levels), the
    model's sigma read off at each, then 0."""
    import scipy.stats

    n = _check_n(n)
    model = model or TrainingSchedule.stable_diffusion()
    total = model.num_train_timesteps - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), alpha, beta) * total).astype(int)
    keep = np.concatenate([[True], ts[1:] != ts[:-1]])
    return _append_zero(model.sigmas[ts[keep]])


def linear_quadratic(n: int, sigma_min: float, sigma_max: float, threshold_noise: float = 0.025,
                     linear_steps: float | None = None) -> np.ndarray:
    """ComfyUI's linear_quadratic (comfy/samplers.py, from genmoai's Mochi): the first half of the steps
    linear in (1 - sigma / sigma_max) up to threshold_noise, the rest quadratic, scaled to sigma_max; ends at 0."""
    n = _check_n(n)
    if n == 1:
        schedule = [1.0, 0.0]
    else:
        ls = int(linear_steps) if linear_steps is not None else n // 2
        linear = [i * threshold_noise / ls for i in range(ls)]
        diff = ls - threshold_noise * n
        qs = n - ls
        quad_coef = diff / (ls * qs ** 2)
        lin_coef = threshold_noise / ls - 2 * diff / (qs ** 2)
        const = quad_coef * ls ** 2
        quadratic = [quad_coef * i ** 2 + lin_coef * i + const for i in range(ls, n)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return np.asarray(schedule, dtype=np.float64) * sigma_max


def align_your_steps(n: int, family: str = "sd1") -> np.ndarray:
    """Align Your Steps (Sabour et al. 2024) as A1111 computes it (modules/sd_schedulers.py): NVIDIA's
    11 levels (their 10-step schedule) for 11 steps, else log-linearly interpolated to n levels; then 0."""
    n = _check_n(n)
    levels = np.asarray(AYS_SDXL if family == "sdxl" else AYS_SD15, dtype=np.float64)
    if n != len(levels):
        xs = np.linspace(0, 1, len(levels))
        ys = np.log(levels[::-1])
        levels = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
    return _append_zero(levels)


# ---------------------------------------------------------------------------------------------------
# Schedules defined on the model's training timesteps
# ---------------------------------------------------------------------------------------------------

def uniform(n: int, model: TrainingSchedule | None = None) -> np.ndarray:
    """Timesteps evenly spaced from T-1 down to 0 (k-diffusion get_sigmas; A1111 'Uniform', ComfyUI
    'normal'); in diffusers, timestep_spacing='linspace'."""
    n = _check_n(n)
    model = model or TrainingSchedule.stable_diffusion()
    return _append_zero(model._t_to_sigma(np.linspace(model.num_train_timesteps - 1, 0, n)))


def sgm_uniform(n: int, model: TrainingSchedule | None = None) -> np.ndarray:
    """n+1 timesteps evenly spaced from T-1 to 0, the last dropped (ComfyUI sgm_uniform, as in SGM /
    SDXL's reference code); in diffusers, timestep_spacing='trailing'."""
    n = _check_n(n)
    model = model or TrainingSchedule.stable_diffusion()
    return _append_zero(model._t_to_sigma(np.linspace(model.num_train_timesteps - 1, 0, n + 1)[:-1]))


def simple(n: int, model: TrainingSchedule | None = None) -> np.ndarray:
    """Every (T/n)-th training sigma counted from the top (ComfyUI 'simple'); ~ timestep_spacing='trailing'."""
    n = _check_n(n)
    model = model or TrainingSchedule.stable_diffusion()
    sig = model.sigmas
    stride = len(sig) / n
    return _append_zero([sig[-(1 + int(i * stride))] for i in range(n)])


def ddim_uniform(n: int, model: TrainingSchedule | None = None) -> np.ndarray:
    """Timesteps range(1, T, T // n), from the top (DDIM's uniform discretisation; A1111's DDIM schedule
    and DDIM sampler, ComfyUI's ddim_uniform). When n does not divide T that is more than n timesteps:
    31 for 30 steps. diffusers' timestep_spacing='leading' with steps_offset=1 gives the first n of them."""
    n = _check_n(n)
    model = model or TrainingSchedule.stable_diffusion()
    stride = max(model.num_train_timesteps // n, 1)
    ts = np.arange(1, model.num_train_timesteps, stride)
    return _append_zero(model.sigmas[ts][::-1])


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScheduleType:
    """One schedule type: its formula, its names in A1111 and ComfyUI, and the diffusers timestep spacing
    that equals it on schedulers that can only be given a spacing (None: those cannot follow it), and the
    diffusers option (``flag``) under which diffusers computes its own version of it (rho 7, alpha = beta = 0.6,
    timesteps rounded where the scheduler rounds them)."""

    name: str
    function: Callable[..., np.ndarray] = field(repr=False)
    needs: Literal["range", "model", "family", "none"]
    params: Mapping[str, float] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    a1111: str | None = None  # A1111's label, where it has this schedule
    comfyui: str | None = None  # ComfyUI's name, where it computes the same
    spacing: tuple[str, int | None] | None = None  # (timestep_spacing, steps_offset)
    flag: str | None = None  # the diffusers scheduler option that computes its own version of this schedule
    sampleable: bool = True  # False: for plots only
    description: str = ""


SCHEDULES: dict[str, ScheduleType] = {s.name: s for s in [
    ScheduleType("uniform", uniform, "model", aliases=("normal", "linear", "linspace"), a1111="Uniform",
                 comfyui="normal", spacing=("linspace", None),
                 description="timesteps evenly spaced from T-1 to 0 (A1111 Uniform and Normal, ComfyUI normal)"),
    ScheduleType("karras", karras, "range", {"rho": 7.0}, a1111="Karras", comfyui="karras", flag="use_karras_sigmas",
                 description="evenly spaced in sigma^(1/rho): more steps at low noise"),
    ScheduleType("exponential", exponential, "range", a1111="Exponential", comfyui="exponential",
                 flag="use_exponential_sigmas",
                 description="evenly spaced in log sigma"),
    ScheduleType("polyexponential", polyexponential, "range", {"rho": 1.0}, a1111="Polyexponential",
                 description="polynomial in log sigma; rho=1 is exponential"),
    ScheduleType("sgm_uniform", sgm_uniform, "model", aliases=("trailing",), a1111="SGM Uniform", comfyui="sgm_uniform",
                 spacing=("trailing", None), description="n+1 evenly spaced timesteps, last dropped"),
    ScheduleType("simple", simple, "model", a1111="Simple", comfyui="simple", spacing=("trailing", None),
                 description="every T/n-th training sigma from the top"),
    ScheduleType("ddim_uniform", ddim_uniform, "model", aliases=("ddim", "leading"), a1111="DDIM",
                 comfyui="ddim_uniform", spacing=("leading", 1),
                 description="timesteps range(1, T, T//n) from the top (more than n when n does not divide T)"),
    ScheduleType("kl_optimal", kl_optimal, "range", a1111="KL Optimal",
                 description="evenly spaced in arctan(sigma), ending at sigma_min (A1111's)"),
    ScheduleType("kl_optimal_comfyui", kl_optimal_comfyui, "range", aliases=("comfyui kl optimal",),
                 description="ComfyUI's kl_optimal: n levels evenly spaced in arctan(sigma), then 0"),
    ScheduleType("align_your_steps", align_your_steps, "family", aliases=("ays",), a1111="Align Your Steps",
                 description="NVIDIA's optimised levels, interpolated to n steps (A1111's)"),
    ScheduleType("beta", beta, "range", {"alpha": 0.6, "beta": 0.6}, a1111="Beta", flag="use_beta_sigmas",
                 description="beta-distribution quantiles placed in sigma (A1111's, diffusers use_beta_sigmas)"),
    ScheduleType("beta_comfyui", beta_comfyui, "model", {"alpha": 0.6, "beta": 0.6}, aliases=("comfyui beta",),
                 description="ComfyUI's beta: the quantiles placed on training timesteps"),
    ScheduleType("linear_quadratic", linear_quadratic, "range", {"threshold_noise": 0.025}, comfyui="linear_quadratic",
                 description="ComfyUI's: linear, then quadratic, in 1 - sigma/sigma_max"),
    ScheduleType("vp", vp, "none", {"beta_d": 19.9, "beta_min": 0.1, "eps_s": 1e-3}, sampleable=False,
                 description="continuous VP-SDE schedule with its own sigma range (for plots; outside SD's range)"),
]}

AUTOMATIC = "automatic"
CUSTOM = "custom"  # a scheduler's schedule that no schedule type names (sdlab.recipe_of)


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_LOOKUP: dict[str, str] = {}
for _s in SCHEDULES.values():
    for _key in (_s.name, *_s.aliases, _s.a1111 or _s.name, _s.comfyui or _s.name):
        _LOOKUP[_norm(_key)] = _s.name


def schedule_label(name: str) -> str:
    """How a schedule is shown to people: A1111's label ("Karras", "Align Your Steps"), "Automatic", or the
    name itself where A1111 has none."""
    if name == AUTOMATIC:
        return "Automatic"
    st = SCHEDULES.get(name)
    return st.a1111 if st is not None and st.a1111 else name


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def resolve_schedule(name: str) -> str:
    """Canonical schedule name for what a user typed ('Karras', 'SGM Uniform', 'normal', ...);
    'automatic' stays 'automatic'."""
    if not isinstance(name, str):
        raise WrongType(f"schedule must be a name (a string) such as 'Karras' or 'automatic', not {name!r:.60}.",
                        argument="schedule")
    key = _norm(name)
    if key in ("automatic", "auto", "default"):
        return AUTOMATIC
    if key == CUSTOM:
        raise InvalidArgument("schedule='custom' is what sdlab records for a scheduler whose schedule it cannot name; "
                         "run those settings with their scheduler_config (or the scheduler itself), or choose a "
                         f"schedule: automatic, {', '.join(SCHEDULES)}.")
    if key in _LOOKUP:
        return _LOOKUP[key]
    import difflib

    close = difflib.get_close_matches(key, list(_LOOKUP), n=1)
    hint = f" Did you mean {_LOOKUP[close[0]]!r}?" if close else ""
    raise InvalidArgument(f"Unknown schedule {name!r}.{hint} Valid schedules: automatic, {', '.join(SCHEDULES)}.")


def schedules() -> list[ScheduleType]:
    """Every schedule type sdlab knows, with its parameters and how it is realised on a scheduler."""
    return list(SCHEDULES.values())


def sigmas(schedule: str, n: int, sigma_min: float | None = None, sigma_max: float | None = None, *,
           model: TrainingSchedule | None = None, family: str = "sd1", **params: float) -> np.ndarray:
    """The noise levels of any schedule type for n steps, ending with the final level (see the module
    docstring: n+1 of them, ending at 0, for most).

    sigma_min / sigma_max default to the training schedule's (``model``, by default Stable Diffusion's).
    Timestep-based schedules (uniform, sgm_uniform, simple, ddim_uniform) use ``model`` instead.
    """
    name = resolve_schedule(schedule)
    if name == AUTOMATIC:
        raise InvalidArgument("'automatic' depends on the sampler; pass a concrete schedule type, or use "
                         "sdlab.plan(scheduler, n) to see what a configured sampler does.")
    st = SCHEDULES[name]
    unknown = set(params) - set(st.params)
    if unknown:
        allowed = ", ".join(st.params) or "none"
        raise InvalidArgument(f"Schedule {name!r} takes no parameter(s) {sorted(unknown)}; its parameters: {allowed}.")
    n = _check_n(n)
    params = {k: checks.number(k, v) for k, v in params.items()}
    if model is not None and not isinstance(model, TrainingSchedule):
        raise WrongType(f"model must be a TrainingSchedule (sdlab.TrainingSchedule.of(lab)) or None for Stable "
                        f"Diffusion's, not {type(model).__name__}.", argument="model")
    model = model or TrainingSchedule.stable_diffusion()
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "its defaults"
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            if st.needs == "range":
                lo = model.sigma_min if sigma_min is None else checks.number("sigma_min", sigma_min)
                hi = model.sigma_max if sigma_max is None else checks.number("sigma_max", sigma_max)
                out = st.function(n, lo, hi, **params)
            elif st.needs == "model":
                out = st.function(n, model, **params)
            elif st.needs == "family":
                out = st.function(n, checks.choice("family", family, ("sd1", "sd2", "sdxl", "toy")))
            else:
                out = st.function(n, **params)
    except (OverflowError, FloatingPointError, ZeroDivisionError) as exc:
        raise InvalidArgument(f"The {name} schedule cannot be computed with {shown} at {n} steps ({exc}): its levels "
                              f"overflow. Its parameters' defaults: {dict(st.params) or 'none'}.",
                              argument=next(iter(params), "n")) from None
    out = np.asarray(out, dtype=np.float64)
    if not np.isfinite(out).all() or (out < 0).any():  # e.g. beta's alpha <= 0: not a distribution
        raise InvalidArgument(f"The {name} schedule with {shown} gives noise levels that are not finite and >= 0 "
                              f"({out[:4]}...). Its parameters' defaults: {dict(st.params) or 'none'}.",
                              argument=next(iter(params), "n"))
    return out
