"""The sampler catalog: names, pitfalls, schedules realised on real diffusers schedulers, and the truth
of what sdlab reports about a configured scheduler (checked against real runs of the tiny model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdlab
from sdlab import models
from sdlab import noise_schedules as S
from sdlab.sampler_catalog import CATALOG, parse_sampler, resolve

REQUIRED = ["DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "DPM2 a", "Euler", "Euler a", "Heun", "LMS",
            "DDIM", "PLMS", "UniPC", "DEIS", "DDPM", "LCM"]
COMBOS = [(s.name, sched) for s in sdlab.samplers() for sched in s.supported_schedules()]


@pytest.fixture
def quiet_tiny(tiny):
    tiny.pipe.set_progress_bar_config(disable=True)
    return tiny


def test_catalog_lists_what_users_know():
    entries = {s.name: s for s in sdlab.samplers()}
    assert set(REQUIRED) <= set(entries)
    assert entries["DPM++ 2M"].cls == "DPMSolverMultistepScheduler"
    assert entries["DPM++ 2M SDE"].options["algorithm_type"] == "sde-dpmsolver++" and entries["DPM++ 2M SDE"].stochastic
    assert entries["Heun"].order == 2 and entries["DPM2"].order == 2 and entries["Euler"].order == 1
    assert entries["Euler a"].stochastic and not entries["Euler"].stochastic
    # A1111's Automatic defaults (REFERENCE section 1)
    assert entries["DPM++ 2M"].default_schedule == "karras"
    assert entries["DPM2 a"].default_schedule == "karras"
    assert entries["DPM++ 2M SDE"].default_schedule == "exponential"
    assert entries["Euler"].default_schedule == "uniform" and entries["LMS"].default_schedule == "uniform"


@pytest.mark.parametrize("name, expected, schedule", [
    ("DPM++ 2M", "DPM++ 2M", None), ("dpm++ 2m", "DPM++ 2M", None), ("dpmpp_2m", "DPM++ 2M", None),
    ("DPMSolverMultistepScheduler", "DPM++ 2M", None), ("euler_ancestral", "Euler a", None),
    ("EULER A", "Euler a", None), ("EulerAncestralDiscreteScheduler", "Euler a", None),
    ("dpm_2_ancestral", "DPM2 a", None), ("uni_pc", "UniPC", None), ("PNDMScheduler", "PLMS", None),
    ("DPM++ 2M Karras", "DPM++ 2M", "karras"), ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "exponential"), ("LMS Karras", "LMS", "karras"),
    ("DPM2 a Karras", "DPM2 a", "karras"), ("dpmpp_2m_sde", "DPM++ 2M SDE", None),
])
def test_names_as_a1111_comfyui_and_diffusers_write_them(name, expected, schedule):
    spec, legacy = parse_sampler(name)
    assert spec.name == expected and legacy == schedule


def test_unknown_sampler_lists_valid_names_and_closest():
    with pytest.raises(ValueError, match=r"Unknown sampler 'DPM\+\+ 2N'.*Closest match: 'DPM\+\+ 2M'.*Euler a"):
        parse_sampler("DPM++ 2N")


def test_impossible_combinations_say_what_is_supported(quiet_tiny):
    with pytest.raises(ValueError, match=r"Euler a .* cannot follow the 'karras' schedule\. Schedules it supports: "
                                         r"automatic, uniform, sgm_uniform, simple, ddim_uniform"):
        sdlab.make_scheduler(quiet_tiny, "Euler a", "karras")
    with pytest.raises(ValueError, match=r"LCM .* Schedules it supports: automatic\.$"):
        sdlab.make_scheduler(quiet_tiny, "LCM", "exponential")
    with pytest.raises(ValueError, match="cannot follow the 'vp' schedule"):
        sdlab.make_scheduler(quiet_tiny, "Euler", "vp")
    with pytest.raises(ValueError, match="already names the 'karras' schedule"):
        sdlab.make_scheduler(quiet_tiny, "DPM++ 2M Karras", "exponential")
    with pytest.raises(ValueError, match="has no option.*'solver_ordr'"):
        sdlab.make_scheduler(quiet_tiny, "DPM++ 2M", solver_ordr=3)
    with pytest.raises(ValueError, match="with diffusers' fixed parameters"):
        sdlab.make_scheduler(quiet_tiny, "DPM++ 2M", "karras", rho=5)
    with pytest.raises(ValueError, match="Unknown schedule"):
        sdlab.make_scheduler(quiet_tiny, "Euler", "karass")


def _run(lab, scheduler, steps=3):
    """A real generation; returns what the scheduler actually did (timesteps seen, sigmas, UNet calls)."""
    lab.pipe.scheduler = scheduler
    calls = []
    hook = lab.pipe.unet.register_forward_hook(lambda m, a, k: calls.append(1))
    seen = []

    def on_step(pipe, i, t, kw):
        seen.append(float(t))
        return kw

    try:
        out = lab.pipe("a lighthouse", num_inference_steps=steps, generator=lab.generator(0), output_type="latent",
                       callback_on_step_end=on_step).images
    finally:
        hook.remove()
    assert torch.isfinite(out).all()
    return seen, len(calls), lab.pipe.scheduler


@pytest.mark.parametrize("sampler, schedule", COMBOS, ids=[f"{a}|{b}" for a, b in COMBOS])
def test_every_sampler_and_schedule_runs_and_reports_the_truth(quiet_tiny, sampler, schedule):
    scheduler = sdlab.make_scheduler(quiet_tiny, sampler, schedule)
    reported = sdlab.plan(scheduler, 3)
    seen, unet_calls, used = _run(quiet_tiny, scheduler, 3)
    assert reported.nfe == unet_calls == len(seen)
    assert reported.timesteps == pytest.approx(np.array(seen))
    if getattr(used, "sigmas", None) is not None:
        assert reported.sigmas[0] == pytest.approx(float(used.sigmas[0]))
        assert reported.sigmas[-1] == pytest.approx(float(used.sigmas[-1]))
    assert len(reported.sigmas) == 4 and np.all(np.diff(reported.sigmas) <= 0)
    assert used.sdlab_sampler == CATALOG[sampler].name


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun", "LMS", "DPM2", "DEIS", "UniPC"])
@pytest.mark.parametrize("schedule, formula", [("karras", S.karras), ("exponential", S.exponential)])
def test_flag_schedules_equal_the_formula_with_the_models_sigma_range(quiet_tiny, sampler, schedule, formula):
    scheduler = sdlab.make_scheduler(quiet_tiny, sampler, schedule)
    training = S.TrainingSchedule(scheduler.alphas_cumprod.double().numpy())
    for n in (5, 20):
        expected = formula(n, training.sigma_min, training.sigma_max)
        got = sdlab.plan(scheduler, n).sigmas
        assert got[:-1] == pytest.approx(expected[:-1], rel=2e-5)
        # DEIS has no final_sigmas_type: it stops at sigma_min, and plan() says so
        assert got[-1] == pytest.approx(training.sigma_min if sampler == "DEIS" else 0.0)


@pytest.mark.parametrize("schedule", ["align_your_steps", "kl_optimal", "polyexponential"])
def test_explicit_sigma_schedules_are_followed_exactly(quiet_tiny, schedule):
    scheduler = sdlab.make_scheduler(quiet_tiny, "Euler", schedule)
    expected = sdlab.sigmas(schedule, 10, model=S.TrainingSchedule(scheduler.alphas_cumprod.double().numpy()))
    assert sdlab.plan(scheduler, 10).sigmas == pytest.approx(expected, rel=1e-6)
    # a plain diffusers call follows it too: the scheduler carries the schedule
    _run(quiet_tiny, scheduler, 10)
    assert quiet_tiny.pipe.scheduler.sigmas.double().numpy() == pytest.approx(expected, rel=1e-6)


def test_karras_with_another_rho_goes_through_explicit_sigmas(quiet_tiny):
    scheduler = sdlab.make_scheduler(quiet_tiny, "Euler", "karras", rho=3.0)
    assert not scheduler.config.use_karras_sigmas
    training = S.TrainingSchedule(scheduler.alphas_cumprod.double().numpy())
    assert sdlab.plan(scheduler, 8).sigmas == pytest.approx(
        S.karras(8, training.sigma_min, training.sigma_max, rho=3.0), rel=1e-6)


def test_ddim_pitfalls_are_fixed_whatever_was_loaded_before(quiet_tiny):
    from diffusers import DDIMScheduler

    bad = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        set_alpha_to_one=True, clip_sample=True)
    quiet_tiny.pipe.scheduler = bad
    for source in (bad, quiet_tiny, dict(bad.config)):
        ddim = sdlab.make_scheduler(source, "DDIM")
        assert ddim.config.set_alpha_to_one is False and ddim.config.clip_sample is False
        assert ddim.config.beta_schedule == "scaled_linear"
    # from_config alone carries the trap over (diffusers issues 1545, 6068): the reason sdlab sets these
    assert DDIMScheduler.from_config(bad.config).config.set_alpha_to_one is True


def test_dpmpp_2m_automatic_is_karras_like_a1111(quiet_tiny):
    s = sdlab.make_scheduler(quiet_tiny, "DPM++ 2M")
    assert s.config.use_karras_sigmas and s.sdlab_schedule == "karras"
    assert s.config.algorithm_type == "dpmsolver++" and s.config.final_sigmas_type == "zero"
    sde = sdlab.make_scheduler(quiet_tiny, "DPM++ 2M SDE")
    assert sde.config.use_exponential_sigmas and sde.config.final_sigmas_type == "zero"
    euler = sdlab.make_scheduler(quiet_tiny, "Euler")
    # A1111's Euler uses evenly spaced timesteps, not SD 1.5's shipped "leading" spacing (REFERENCE 1)
    assert euler.config.timestep_spacing == "linspace" and quiet_tiny.default_scheduler.config.timestep_spacing == "leading"


def test_model_config_is_kept(quiet_tiny):
    cfg = dict(quiet_tiny.default_scheduler.config)
    cfg["prediction_type"] = "v_prediction"
    for name in ("Euler", "DDIM", "DPM++ 2M", "Heun"):
        s = sdlab.make_scheduler(cfg, name)
        assert s.config.prediction_type == "v_prediction"
        assert s.config.beta_start == 0.00085 and s.config.beta_schedule == "scaled_linear"


def test_effective_config_report_shows_what_sdlab_set(quiet_tiny):
    s = sdlab.make_scheduler(quiet_tiny, "DDIM")
    changes = sdlab.effective_config(s, quiet_tiny.default_scheduler)
    assert changes["class"] == ("PNDMScheduler", "DDIMScheduler")
    assert changes["clip_sample"] == ("(default True)", False)
    assert "beta_start" not in changes  # kept from the model
    text = sdlab.describe(s, quiet_tiny.default_scheduler)
    assert text.startswith("DDIM, schedule ddim_uniform: DDIMScheduler") and "clip_sample" in text
    ays = sdlab.describe(sdlab.make_scheduler(quiet_tiny, "Euler", "align_your_steps"), quiet_tiny.default_scheduler)
    assert "set_timesteps(sigmas=...): None -> 'sdlab align_your_steps schedule'" in ays
    euler = sdlab.describe(sdlab.make_scheduler(quiet_tiny, "Euler"), quiet_tiny.default_scheduler)
    assert "timestep_spacing: 'leading' -> 'linspace'" in euler


def test_plan_counts_unet_calls_like_the_pitfalls_say(quiet_tiny):
    assert sdlab.plan(sdlab.make_scheduler(quiet_tiny, "PLMS"), 10).nfe == 11  # one warm-up call more
    assert sdlab.plan(sdlab.make_scheduler(quiet_tiny, "Heun"), 10).nfe == 19  # two per step, one at the end
    assert sdlab.plan(sdlab.make_scheduler(quiet_tiny, "Euler"), 10).nfe == 10
    assert sdlab.plan(sdlab.make_scheduler(quiet_tiny, "Heun"), 10).calls_per_step == pytest.approx(1.9)


def test_switching_sampler_never_reloads_weights(clean_registry, monkeypatch):
    lab = sdlab.load("tiny")
    calls = []
    monkeypatch.setattr(models, "_load_pipeline", lambda *a, **k: calls.append(a))
    unet = lab.pipe.unet
    for name in ("DDIM", "Euler a", "DPM++ 2M Karras"):
        scheduler = lab.set_sampler(name)
        assert lab.pipe.scheduler is scheduler and lab.pipe.unet is unet
    assert sdlab.load("tiny") is lab and calls == []
    assert type(lab.default_scheduler).__name__ == "PNDMScheduler"  # the model's own stays untouched


def test_make_scheduler_for_plain_diffusers_users(quiet_tiny):
    s = sdlab.make_scheduler(quiet_tiny.pipe.scheduler.config, "dpmpp_2m", "Karras")
    assert type(s).__name__ == "DPMSolverMultistepScheduler" and s.config.use_karras_sigmas
    spec, sched = resolve("Euler a", "automatic")
    assert (spec.name, sched) == ("Euler a", "uniform")
