"""Schedulers that survive their own config: the scheduler harness.

In the style of diffusers' ``SchedulerCommonTest.check_over_configs`` (tests/schedulers/test_schedulers.py):
every catalog sampler x every schedule it accepts, on a dummy model, with no pipeline, so that each
combination costs milliseconds. For each one:

1. ``type(s).from_config(s.config)`` runs the same timesteps, sigmas and step outputs;
2. so do ``save_config`` / ``from_pretrained``, pickle, cloudpickle and deepcopy round trips;
3. diffusers' own class built from the config runs diffusers' version of the same schedule, exactly what a
   diffusers user gets by asking for that schedule (its flag or spacing), and ``recipe_of`` says so;
4. ``plan``, ``plot_plan``'s formula line, the recipe's levels and the scheduler agree.

Pipelines appear only where the property needs one: a scheduler handed to ``generate`` is recognised and its
saved settings reproduce the image bit for bit; a pipeline saved with ``save_pretrained`` runs the same levels.
(Bit-identity of every sampler with a plain ``pipe()`` call is in test_generation.py.)
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import pickle

import cloudpickle
import numpy as np
import pytest
import torch

import sdlab
from sdlab import noise_schedules as S
from sdlab import recipes
from sdlab.sampler_catalog import CATALOG, diffusers_class

# Stable Diffusion 1.5's shipped scheduler config (scheduler/scheduler_config.json of the model)
SD15 = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False, "trained_betas": None}
# every sampler with every schedule it accepts ("automatic" is the entry's default one, so it is covered)
COMBOS = [(s.name, sched) for s in sdlab.samplers() for sched in s.supported_schedules()
          if sched != S.AUTOMATIC or s.default_schedule == S.AUTOMATIC]
IDS = [f"{a}|{b}" for a, b in COMBOS]
STEPS = 7

# What a diffusers user passes for each schedule (diffusers' scheduler overview: use_karras_sigmas, ...,
# timestep_spacing "linspace" / "trailing" / "leading"); linspace beside a flag: k-diffusion starts at sigma_max.
DIFFUSERS_WAY = {"karras": {"use_karras_sigmas": True, "timestep_spacing": "linspace"},
                 "exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
                 "beta": {"use_beta_sigmas": True, "timestep_spacing": "linspace"},
                 "uniform": {"timestep_spacing": "linspace"}, "sgm_uniform": {"timestep_spacing": "trailing"},
                 "simple": {"timestep_spacing": "trailing"},
                 "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1}}


@functools.cache
def _built(sampler: str, schedule: str):
    return sdlab.make_scheduler(SD15, sampler, schedule, seed=3)


def fresh(sampler: str, schedule: str):
    """A scheduler as make_scheduler builds it, never stepped. (Built once per combination and copied: DPM2's
    own __init__ runs set_timesteps over all 1000 training steps, about 0.2 s, diffusers' cost, not sdlab's.)"""
    return copy.deepcopy(_built(sampler, schedule))


def dummy_model(x: torch.Tensor, t) -> torch.Tensor:
    """Depends on the sample and the timestep, like diffusers' dummy model, and is cheap."""
    return 0.1 * x * (float(t) / 1000 + 0.5)


def trajectory(s, steps: int = STEPS) -> dict:
    """What a pipeline's denoising loop does with a scheduler (diffusers' StableDiffusionPipeline): set the
    timesteps, start from noise x init_noise_sigma, then scale_model_input, model, step, per timestep."""
    s.set_timesteps(steps)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
    extra = {"generator": torch.Generator().manual_seed(1)} if "generator" in inspect.signature(s.step).parameters else {}
    timesteps = s.timesteps.clone()
    after = []
    for t in timesteps:
        x = s.step(dummy_model(s.scale_model_input(x, t), t), t, x, **extra).prev_sample
        sig, index = getattr(s, "sigmas", None), getattr(s, "step_index", None)
        after.append(float(sig[index]) if sig is not None and index is not None and index < len(sig) else None)
    sigmas = getattr(s, "sigmas", None)
    return {"timesteps": timesteps, "sigmas": None if sigmas is None else torch.as_tensor(sigmas).clone(),
            "x": x, "start": float(s.init_noise_sigma), "after": after}


def assert_same_run(a: dict, b: dict) -> None:
    assert torch.equal(a["timesteps"], b["timesteps"])
    assert (a["sigmas"] is None) == (b["sigmas"] is None)
    if a["sigmas"] is not None:
        assert torch.equal(a["sigmas"], b["sigmas"])
    assert a["start"] == b["start"]
    assert torch.equal(a["x"], b["x"])


@pytest.mark.parametrize("sampler, schedule", COMBOS, ids=IDS)
def test_round_trips_run_the_same_steps(sampler, schedule, tmp_path):
    s = _built(sampler, schedule)  # pristine: only copied below
    want = trajectory(copy.deepcopy(s))
    recipe = sdlab.recipe_of(s)
    s.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    rebuilt = {
        "from_config": lambda: type(s).from_config(s.config),
        # from_pretrained by the class the saved config names, as sdlab.read_settings rebuilds it
        "save_config/from_pretrained": lambda: recipes.scheduler_class(saved["_class_name"]).from_pretrained(tmp_path),
        "pickle": lambda: pickle.loads(pickle.dumps(s)),
        "cloudpickle": lambda: cloudpickle.loads(cloudpickle.dumps(s)),
    }
    for how, make in rebuilt.items():
        other = make()
        assert type(other) is type(s), how
        assert sdlab.recipe_of(other) == recipe, how
        assert_same_run(trajectory(other), want)


@pytest.mark.parametrize("sampler, schedule", COMBOS, ids=IDS)
def test_diffusers_own_class_runs_diffusers_version_of_the_same_schedule(sampler, schedule):
    s = fresh(sampler, schedule)
    cls = diffusers_class(s)
    plain = cls.from_config(s.config)
    assert type(plain) is cls
    recipe = sdlab.recipe_of(plain)
    assert recipe.sampler == sampler and recipe.via == "diffusers"
    spec = CATALOG[sampler]
    if schedule == S.AUTOMATIC:  # LCM's own grid
        assert recipe.schedule == S.AUTOMATIC
        return
    if schedule in DIFFUSERS_WAY:  # the same schedule type, exactly as diffusers computes it
        assert recipe.schedule == schedule
        theirs = cls.from_config(SD15, **spec.options, **DIFFUSERS_WAY[schedule],
                                 **({"noise_sampler_seed": 3} if "noise_sampler_seed" in s.config else {}))
    else:  # diffusers has no option for it (Align Your Steps, KL Optimal, ...): its model's uniform spacing
        assert recipe.schedule == "uniform" and S.SCHEDULES[schedule].flag is None
        assert S.SCHEDULES[schedule].spacing is None
        theirs = cls.from_config(SD15, **spec.options, timestep_spacing="linspace",
                                 **({"noise_sampler_seed": 3} if "noise_sampler_seed" in s.config else {}))
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "timestep_spacing"):
        assert plain.config.get(key) == theirs.config.get(key), key
    assert_same_run(trajectory(plain), trajectory(theirs))


@pytest.mark.parametrize("sampler, schedule", COMBOS, ids=IDS)
def test_plan_formula_line_and_scheduler_agree(sampler, schedule):
    from sdlab import plots

    s = fresh(sampler, schedule)
    recipe = sdlab.recipe_of(s)
    assert (recipe.sampler, recipe.schedule) == (sampler, schedule)
    p = sdlab.plan(s, STEPS)
    assert p.recipe == recipe
    run = trajectory(fresh(sampler, schedule))
    # the plan, known before the run, is what the scheduler does during it
    assert p.nfe == len(run["timesteps"]) and p.timesteps == pytest.approx(run["timesteps"].double().numpy())
    assert len(p.step_of_call) == len(p.sigma_after_call) == p.nfe
    for planned, live in zip(p.sigma_after_call, run["after"]):
        if live is not None:
            assert planned == pytest.approx(live, rel=1e-6)  # float32 sigmas against the plan's float64
    drawn = plots.plot_plan(s, STEPS)
    assert np.array_equal(drawn.artists["scheduler"].get_ydata(), p.sigmas)
    if not recipe.has_formula:
        assert "formula" not in drawn.artists
        return
    levels = recipe.levels(STEPS, S.TrainingSchedule.of(s))
    assert np.array_equal(drawn.artists["formula"].get_ydata(), levels)
    if recipe.via == "sdlab":  # sdlab's classes run the recipe's levels (float32 sigmas: 2^-24 relative rounding)
        ran = p.sigmas[:-1] if CATALOG[sampler].ends_at_sigma_min and p.sigmas[-1] == p.sigmas[-2] else p.sigmas
        if levels[-1] > 0 and len(ran) == len(levels) + 1 and ran[-1] == 0:  # A1111's KL Optimal ends at sigma_min
            assert len(p.notes) == 1 and "without a last step to 0" in p.notes[0]
            ran = ran[:-1]
        else:
            assert not p.notes
        assert ran == pytest.approx(levels, rel=2 ** -23)
    else:  # a timestep spacing: what differs is said
        body = p.sigmas[:-1]
        if len(body) != len(levels) - 1 or not np.allclose(body, levels[:-1], rtol=1e-4):
            assert p.notes


def test_the_config_says_what_the_scheduler_is():
    karras = fresh("DPM++ 2M", "karras")
    assert karras.config.use_karras_sigmas and not karras.config.use_exponential_sigmas
    assert type(karras).__name__ == "SdlabDPMSolverMultistepScheduler" and type(karras).__module__ == "sdlab.recipes"
    assert karras.config["_sdlab_recipe"] == {"sampler": "DPM++ 2M", "schedule": "karras", "params": {},
                                              "family": "sd1"}
    assert fresh("Euler", "sgm_uniform").config.timestep_spacing == "trailing"
    ays = fresh("Euler", "align_your_steps")
    assert not any(ays.config[f] for f in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))
    # the levels of the example, 10 steps: Karras, and rebuilt from its own config still Karras
    want = [14.61, 9.10, 5.48, 3.17]
    for s in (karras, type(karras).from_config(karras.config)):
        assert sdlab.plan(s, 10).sigmas[:4] == pytest.approx(want, abs=5e-3)


def test_which_sampler_has_one_answer_everywhere(lab, tmp_path):
    sde = sdlab.make_scheduler(lab, "DPM++ 2M SDE", "karras")
    run = lab.generate("a cat", steps=4, seed=2, scheduler=sde)
    assert (run.settings.sampler, run.settings.schedule) == ("DPM++ 2M SDE", "karras")
    assert run.scheduler_report["sampler"] == "DPM++ 2M SDE" and run.scheduler_report["schedule"] == "karras"
    assert run.plan.recipe == sdlab.recipe_of(sde)
    assert "Sampler: DPM++ 2M SDE, Schedule type: Karras" in run.infotext()
    assert sdlab.describe(sde).startswith("DPM++ 2M SDE, schedule Karras: SdlabDPMSolverMultistepScheduler")


@pytest.mark.parametrize("sampler", [s.name for s in sdlab.samplers()] + ["DPM2|karras", "Euler|align_your_steps"])
def test_a_scheduler_handed_to_generate_is_recognised_and_reproduces(lab, tmp_path, sampler):
    name, _, schedule = sampler.partition("|")
    scheduler = sdlab.make_scheduler(lab, name, schedule or "automatic", seed=7)
    recipe = sdlab.recipe_of(scheduler)
    run = lab.generate("a lighthouse", steps=4, seed=7, scheduler=scheduler, width=32, height=32)
    assert (run.settings.sampler, run.settings.schedule) == (recipe.sampler, recipe.schedule) == \
           (name, schedule or CATALOG[name].default_schedule)
    read = sdlab.read_settings(run.save(tmp_path / "run.png"))
    again = lab.generate(read)
    assert torch.equal(again.final_latents, run.final_latents)
    assert again.image.tobytes() == run.image.tobytes()


def test_a_plain_diffusers_scheduler_is_recognised_too(lab, tmp_path):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    plain = DPMSolverMultistepScheduler.from_config(lab.default_scheduler.config, use_karras_sigmas=True,
                                                    algorithm_type="sde-dpmsolver++")
    run = lab.generate("a cat", steps=4, seed=1, scheduler=plain)
    assert (run.settings.sampler, run.settings.schedule) == ("DPM++ 2M SDE", "karras")
    assert run.scheduler_report["via"] == "diffusers"
    again = lab.generate(sdlab.read_settings(run.save(tmp_path / "plain.png")))
    assert again.image.tobytes() == run.image.tobytes()
    # SD 1.5's own Euler config: leading spacing with steps_offset 1 is the DDIM schedule's first n timesteps
    assert sdlab.recipe_of(EulerDiscreteScheduler.from_config(SD15)).schedule == "ddim_uniform"
    odd = sdlab.recipe_of(EulerDiscreteScheduler.from_config(SD15, steps_offset=0))
    assert odd.via == "custom" and odd.sampler == "Euler" and "steps_offset=0" in odd.reason
    other = sdlab.recipe_of(DPMSolverMultistepScheduler(solver_order=1))
    assert other.via == "custom" and "solver_order=1" in other.reason and "nearest: DPM++ 2M" in other.reason
    with pytest.raises(TypeError, match="scheduler must be a diffusers scheduler"):
        sdlab.recipe_of("DPM++ 2M")


def test_a_recipe_copied_to_another_class_is_not_believed():
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler.from_config(fresh("DPM++ 2M", "karras").config)
    recipe = sdlab.recipe_of(euler)
    assert (recipe.sampler, recipe.schedule, recipe.via) == ("Euler", "karras", "diffusers")
    bad = dict(fresh("Euler", "karras").config)
    bad["_sdlab_recipe"] = {"sampler": "rm -rf", "schedule": "karras"}
    assert sdlab.recipe_of(recipes.SdlabEulerDiscreteScheduler.from_config(bad)).via == "diffusers"


def test_a_saved_pipeline_keeps_its_levels(lab, tmp_path):
    from diffusers import DiffusionPipeline

    before = lab.pipe.scheduler
    try:
        lab.pipe.scheduler = sdlab.make_scheduler(lab, "DPM2", "karras")
        lab.pipe.save_pretrained(tmp_path)
    finally:
        lab.pipe.scheduler = before
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["sdlab.recipes", "SdlabKDPM2DiscreteScheduler"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path, safety_checker=None).scheduler
    assert sdlab.recipe_of(loaded) == sdlab.recipe_of(sdlab.make_scheduler(lab, "DPM2", "karras"))
    assert sdlab.plan(loaded, 6).sigmas == pytest.approx(
        sdlab.recipe_of(loaded).levels(6, S.TrainingSchedule.of(loaded)), rel=2 ** -23)


def test_a_recipe_is_one_value_from_names_or_from_a_scheduler():
    r = sdlab.Recipe.resolve("DPM++ 2M Karras")
    assert r == sdlab.recipe_of(fresh("DPM++ 2M", "karras")) == sdlab.Recipe.resolve("dpmpp_2m", "Karras")
    assert sdlab.Recipe.resolve("Euler", "karras", params={"rho": 7.0}) == sdlab.Recipe.resolve("Euler", "karras")
    rho3 = sdlab.Recipe.resolve("Euler", "karras", params={"rho": 3})
    assert rho3.label == "Euler, Karras (rho=3)" and rho3.schedule_params == {"rho": 3.0}
    assert sdlab.recipe_of(sdlab.make_scheduler(SD15, "Euler", "karras", rho=3)) == rho3
    assert pickle.loads(pickle.dumps(rho3)) == rho3 and recipes.Recipe.from_config(rho3.to_config()) == rho3
    with pytest.raises(ValueError, match="params\\['rho'\\] must be a finite number"):
        sdlab.Recipe.resolve("Euler", "karras", params={"rho": float("nan")})
    with pytest.raises(ValueError, match="cannot follow"):
        recipes.Recipe.from_config({"sampler": "Euler a", "schedule": "karras"})


def test_a_scheduler_follows_its_recipe_only_while_its_config_says_it():
    from diffusers import EulerDiscreteScheduler

    s = fresh("Euler", "karras")
    changed = type(s).from_config(s.config, use_karras_sigmas=False)
    r = sdlab.recipe_of(changed)
    assert (r.sampler, r.schedule, r.via) == ("Euler", "uniform", "diffusers")
    plain = EulerDiscreteScheduler.from_config(SD15, timestep_spacing="linspace")
    assert_same_run(trajectory(changed), trajectory(plain))


# --- what a new user's trial found (each with the case that showed it) ---------------------------------------
def test_an_unseeded_dpmpp_sde_scheduler_is_seeded_with_the_run(toy, tmp_path):
    s = sdlab.make_scheduler(toy, "DPM++ SDE", "karras")  # no seed: diffusers draws a new tree each time
    kw = dict(steps=6, seed=1, width=64, height=64, scheduler=s)
    a, b = toy.generate("a red circle", **kw), toy.generate("a red circle", **kw)
    assert a.image.tobytes() == b.image.tobytes() and a.settings.scheduler_config["noise_sampler_seed"] == 1
    again = toy.generate(sdlab.read_settings(a.save(tmp_path / "sde.png")))
    assert again.image.tobytes() == a.image.tobytes()


def test_a_plain_class_is_said_to_run_diffusers_defaults_not_the_recipes_parameters():
    from diffusers import DPMSolverMultistepScheduler

    plain = DPMSolverMultistepScheduler.from_config(sdlab.make_scheduler(SD15, "DPM++ 2M", "karras", rho=3).config)
    r = sdlab.recipe_of(plain)
    assert (r.schedule, r.params, r.via) == ("karras", (), "diffusers")


def test_options_that_change_the_schedule_or_its_end_make_it_custom_or_another_entry():
    from diffusers import EulerDiscreteScheduler

    # diffusers' DPM-Solver tries Karras first, then lu-lambdas, then exponential: recipe_of says what runs
    lu = sdlab.make_scheduler(SD15, "DPM++ 2M", "karras", use_lu_lambdas=True)
    r = sdlab.recipe_of(lu)
    assert (r.schedule, r.via) == ("karras", "diffusers") and sdlab.plan(lu, 10).sigmas[1] == pytest.approx(9.10, abs=0.01)
    lu = sdlab.make_scheduler(SD15, "DPM++ 2M", "exponential", use_lu_lambdas=True)
    r = sdlab.recipe_of(lu)
    assert r.via == "custom" and "use_lu_lambdas" in r.reason
    # (lu-lambdas are evenly spaced in log-SNR, which is exponential's spacing in sigma: the same levels to
    # float32 rounding, by diffusers' other code path; it is still not sdlab's recipe, and says so)
    stops = EulerDiscreteScheduler.from_config(sdlab.make_scheduler(SD15, "UniPC", "karras").config)
    r = sdlab.recipe_of(stops)
    assert r.via == "custom" and "final_sigmas_type='sigma_min'" in r.reason
    dpm = sdlab.recipe_of(sdlab.make_scheduler(SD15, "DPM++ 2M", "karras", final_sigmas_type="sigma_min"))
    assert dpm.via == "custom"


@pytest.mark.parametrize("sampler, schedule, params, steps", [
    ("Euler", "beta", {"alpha": 0.6, "beta": 0.1}, 50), ("DPM++ 2M", "polyexponential", {"rho": 10}, 50),
    ("Heun", "beta", {"alpha": 0.6, "beta": 0.05}, 10)])
def test_levels_that_do_not_fall_are_refused_before_the_run(lab, sampler, schedule, params, steps):
    with pytest.raises(ValueError, match="do not fall at every step"):
        lab.generate("x", sampler=sampler, schedule=schedule, schedule_params=params, steps=steps, width=32, height=32)


def test_schedule_parameters_that_overflow_and_options_that_cannot_be_read_back_are_refused(lab):
    with pytest.raises(ValueError, match="karras schedule cannot be computed with rho=0.001"):
        sdlab.sigmas("karras", 10, rho=1e-3)
    with pytest.raises(ValueError, match=r"scheduler_config\['solver_order'\] is 5"):
        sdlab.make_scheduler(lab, "DPM++ 2M", "karras", solver_order=5)
    with pytest.raises(ValueError, match="the scheduler decides the sampler and schedule"):
        lab.generate("x", sampler="Euler", scheduler=sdlab.make_scheduler(lab, "DPM++ 2M"), steps=2)


def test_a1111s_older_k_names_are_understood():
    from sdlab.sampler_catalog import parse_sampler

    assert [parse_sampler(n)[0].name for n in ("k_euler_a", "k_dpmpp_2m", "k_lms", "k_dpm_2_a")] == \
        ["Euler a", "DPM++ 2M", "LMS", "DPM2 a"]
    assert parse_sampler("k_dpmpp_2m_ka") == (CATALOG["DPM++ 2M"], "karras")
    with pytest.raises(ValueError, match="'k_dpm_fast' cannot run in sdlab"):
        parse_sampler("k_dpm_fast")


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])
def test_a_scheduler_in_use_survives_copies_too(sampler):
    s = fresh(sampler, "ddim_uniform" if sampler != "DPM++ 2M" else "karras")
    s.set_timesteps(7)
    for other in (copy.deepcopy(s), pickle.loads(pickle.dumps(s)), cloudpickle.loads(cloudpickle.dumps(s))):
        assert float(other.init_noise_sigma) == float(s.init_noise_sigma)
        assert torch.equal(other.timesteps, s.timesteps) and torch.equal(other.sigmas, s.sigmas)
