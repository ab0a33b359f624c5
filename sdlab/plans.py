"""What a configured scheduler really does: its plan (noise levels, timesteps, UNet calls), the settings
it changes against the model's own, and where it differs from A1111 for the same names.

Everything here is read off the scheduler itself (``set_timesteps`` on a copy) and compared with its
recipe (``sdlab.recipe_of``), the one answer to which sampler and schedule it runs.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from . import checks
from . import noise_schedules as S
from .errors import InvalidArgument, WrongType
from .recipes import Recipe, recipe_of
from .sampler_catalog import diffusers_class, is_variance_exploding


def config_changes(scheduler, reference=None) -> dict[str, tuple[Any, Any]]:
    """What differs between ``scheduler`` and ``reference``, a scheduler or a config (normally the model's
    own, ``lab.default_scheduler``): {key: (reference value, value in use)}. Keys the reference lacks are
    compared with the scheduler class's defaults; a scheduler that runs its recipe's levels says so
    under "noise levels"."""
    checks.scheduler("scheduler", scheduler)
    if reference is not None and not isinstance(getattr(reference, "config", reference), Mapping):
        raise WrongType(f"reference must be a scheduler, a scheduler config (dict) or None, not "
                        f"{type(reference).__name__}.", argument="reference")
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
    recipe = recipe_of(scheduler)
    if recipe.via == "sdlab":
        how = ("set_timesteps(sigmas=...)" if recipe.entry.route == "sigmas"
               else "the sigma-conversion step, fractional timesteps")
        out["noise levels"] = (None, f"A1111's {recipe.schedule_text} via {how}")
    return out


effective_config = config_changes  # the name it had first (it returns the differences, not the config)


def describe(scheduler, reference=None) -> str:
    """A short report: sampler, schedule, and every setting that differs from the reference config."""
    recipe = recipe_of(scheduler)
    how = {"sdlab": "", "diffusers": " (diffusers' own version of the schedule)",
           "custom": f" (custom: {recipe.reason})"}[recipe.via]
    head = f"{recipe.sampler}, schedule {recipe.schedule_text}{how}: {type(scheduler).__name__}"
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
    recipe: Recipe | None = None  # the sampler and schedule it runs (sdlab.recipe_of)

    @property
    def calls_per_step(self) -> float:
        return self.nfe / self.steps


def plan(scheduler, steps: int) -> Plan:
    """Run ``set_timesteps`` on a copy of the scheduler and report its sigmas, timesteps and NFE, and
    where they differ from A1111's levels for the same sampler and schedule."""
    checks.scheduler("scheduler", scheduler)
    steps = checks.whole("steps", steps, low=1, high=checks.MAX_STEPS)
    recipe = recipe_of(scheduler)
    s = copy.deepcopy(scheduler)
    try:
        s.set_timesteps(steps, device="cpu")
    except (ValueError, IndexError, ZeroDivisionError) as exc:  # diffusers' own limits (DDIM: steps <= T, ...)
        raise InvalidArgument(f"steps={steps}: {type(scheduler).__name__} cannot set {steps} steps ({exc}).",
                              argument="steps") from None
    timesteps = s.timesteps.detach().cpu().double().numpy()
    trained = int(s.config.get("num_train_timesteps", 1000))
    if len(timesteps) and timesteps.max() >= trained:  # DDIM's "leading" spacing + steps_offset 1 at n = T
        most = trained - int(s.config.get("steps_offset", 0)) if s.config.get("timestep_spacing") == "leading" \
            else trained - 1
        raise InvalidArgument(f"steps={steps}: {type(scheduler).__name__} would step from timestep "
                              f"{int(timesteps.max())}, past the model's {trained} training timesteps (its "
                              f"timestep_spacing {s.config.get('timestep_spacing')!r} with steps_offset "
                              f"{s.config.get('steps_offset', 0)}); use at most {most} steps.", argument="steps")
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
            and diffusers_class(s).__name__ in ("DDIMScheduler", "PNDMScheduler") else 0.0
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
                variance_exploding=is_variance_exploding(s), notes=_differences(s, recipe, steps, levels),
                recipe=recipe)


def _differences(s, recipe: Recipe, steps: int, levels: np.ndarray) -> tuple[str, ...]:
    """Sentences saying where a scheduler does not follow A1111's levels for its recipe's schedule."""
    if not recipe.has_formula:
        return ()
    label = recipe.schedule_label
    name = diffusers_class(s).__name__
    training = S.TrainingSchedule.of(s)
    want = recipe.levels(steps, training)
    notes = []
    if name in ("DDIMScheduler", "PNDMScheduler"):
        # each step goes from t to t - T // n (diffusers' DDIM / PNDM step()); with 'trailing' spacing and n
        # not dividing T, the timesteps are 12 and 13 apart (say), so steps land between them and the run
        # does not converge (sdlab.sampler_accuracy measures it)
        T = training.num_train_timesteps
        gaps = -np.diff(np.unique(np.asarray(s.timesteps, dtype=np.int64))[::-1])
        if len(gaps) and np.any(gaps != T // steps):
            notes.append(f"{name} steps from each timestep to t - {T // steps}, but {label} at {steps} "
                         f"steps spaces the timesteps {int(gaps.min())} to {int(gaps.max())} apart, so its steps land "
                         f"between them and the result is inaccurate; choose a step count that divides {T}, or "
                         "the ddim_uniform schedule.")
            return tuple(notes)
    if recipe.entry.ends_at_sigma_min and len(levels) > 1 and levels[-1] == levels[-2]:
        levels = levels[:-1]  # the zero-length last step of UniPC / DEIS
    if len(want) != len(levels):
        T = training.num_train_timesteps
        if recipe.schedule == "ddim_uniform" and len(want) > len(levels):
            notes.append(f"A1111 and ComfyUI run {len(want) - 1} steps for {label} with {steps} steps (timesteps "
                         f"range(1, {T}, {T // steps})); {name} can only be given a spacing and runs {len(levels) - 1}.")
        elif want[-1] > 0 and levels[-1] == 0:
            notes.append(f"A1111's {label} ends at sigma {want[-1]:.4g} without a last step to 0; "
                         f"{name} always takes that step, one more than A1111.")
        else:
            notes.append(f"{name} runs {len(levels) - 1} steps where A1111's {label} has {len(want) - 1}.")
        return tuple(notes)
    # the final level of DDIM / PLMS is alpha-bar of timestep 0 by design, as A1111's own DDIM / PLMS end
    body_want, body = want[:-1], levels[:-1]
    rel = np.max(np.abs(body - body_want) / np.maximum(body_want, 1e-12)) if len(body) else 0.0
    if rel > 1e-4:
        how = "timestep spacing" if recipe.entry.route == "spacing" else "own version of it (a diffusers flag or spacing)"
        notes.append(f"{name} follows {label} only through diffusers' {how}: its noise levels "
                     f"differ from A1111's by up to {rel:.2%} at {steps} steps.")
    return tuple(notes)
