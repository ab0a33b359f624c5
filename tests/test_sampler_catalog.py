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

REQUIRED = ["DPM++ 2M", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ SDE", "DPM++ 3M SDE", "DPM2", "DPM2 a", "Euler",
            "Euler a", "Heun", "LMS", "DDIM", "PLMS", "UniPC", "UniPC bh2", "DEIS", "DDPM", "LCM"]


def test_catalog_lists_what_users_know():
    entries = {s.name: s for s in sdlab.samplers()}
    assert set(REQUIRED) <= set(entries)
    assert entries["DPM++ 2M"].cls == "DPMSolverMultistepScheduler"
    assert entries["DPM++ 2M SDE"].options["algorithm_type"] == "sde-dpmsolver++" and entries["DPM++ 2M SDE"].stochastic
    assert entries["Heun"].order == 2 and entries["DPM2"].order == 2 and entries["Euler"].order == 1
    assert entries["Euler a"].stochastic and not entries["Euler"].stochastic
    # A1111's Automatic defaults (modules/sd_samplers_kdiffusion.py: the scheduler each sampler names)
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
    ("uni_pc_bh2", "UniPC bh2", None), ("dpmpp_3m_sde", "DPM++ 3M SDE", None), ("DPM++ 3M SDE Exponential", "DPM++ 3M SDE", "exponential"),
    ("dpmpp_sde_gpu", "DPM++ SDE", None), ("dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun", None),
])
def test_names_as_a1111_comfyui_and_diffusers_write_them(name, expected, schedule):
    spec, legacy = parse_sampler(name)
    assert spec.name == expected and legacy == schedule


def test_unknown_sampler_lists_valid_names_and_closest():
    with pytest.raises(ValueError, match=r"Unknown sampler 'DPM\+\+ 2N'.*Closest match: 'DPM\+\+ 2M'.*Euler a"):
        parse_sampler("DPM++ 2N")


def test_impossible_combinations_say_what_is_supported(lab):
    with pytest.raises(ValueError, match=r"Euler a .* cannot follow the 'karras' schedule\. Schedules it supports: "
                                         r"automatic, uniform, sgm_uniform, simple, ddim_uniform"):
        sdlab.make_scheduler(lab, "Euler a", "karras")
    with pytest.raises(ValueError, match=r"LCM .* Schedules it supports: automatic\.$"):
        sdlab.make_scheduler(lab, "LCM", "exponential")
    with pytest.raises(ValueError, match="cannot follow the 'vp' schedule"):
        sdlab.make_scheduler(lab, "Euler", "vp")
    with pytest.raises(ValueError, match="already names the 'karras' schedule"):
        sdlab.make_scheduler(lab, "DPM++ 2M Karras", "exponential")
    with pytest.raises(ValueError, match=r"\['solver_ordr'\] are neither parameters"):
        sdlab.make_scheduler(lab, "DPM++ 2M", solver_ordr=3)
    with pytest.raises(ValueError, match="Unknown schedule"):
        sdlab.make_scheduler(lab, "Euler", "karass")
    with pytest.raises(ValueError, match=r"DDIM .* cannot follow the 'uniform' schedule: .*t - T // n.*does not converge"):
        sdlab.make_scheduler(lab, "DDIM", "uniform")


def _run(lab, scheduler, steps=3):
    """A real generation; returns what the scheduler actually did: the timesteps the UNet saw, the number
    of UNet calls, the scheduler, and the noise level it stood at after each call."""
    lab.pipe.scheduler = scheduler
    calls = []
    hook = lab.pipe.unet.register_forward_hook(lambda m, a, k: calls.append(1))
    seen, after = [], []

    def on_step(pipe, i, t, kw):
        seen.append(float(t))
        sched = pipe.scheduler  # the noise level the scheduler now stands at, where it keeps sigmas
        sig = getattr(sched, "sigmas", None)
        index = getattr(sched, "step_index", None)
        after.append(float(sig[index]) if sig is not None and index is not None and index < len(sig) else None)
        return kw

    try:
        out = lab.pipe("a lighthouse", num_inference_steps=steps, generator=lab.generator(0), output_type="latent",
                       callback_on_step_end=on_step).images
    finally:
        hook.remove()
    assert torch.isfinite(out).all()
    return seen, len(calls), lab.pipe.scheduler, after


# What a configured scheduler reports against what it does, for every sampler and schedule, and its round
# trips through its own config: tests/test_recipes.py (a dummy model, no pipeline).


LEVELS = [s.name for s in sdlab.samplers() if s.route != "spacing"]


@pytest.mark.parametrize("sampler", LEVELS)
@pytest.mark.parametrize("schedule", ["karras", "exponential", "uniform", "align_your_steps", "beta_comfyui",
                                      "polyexponential"])
def test_schedules_are_a1111s_levels_on_every_scheduler_that_can_follow_them(lab, sampler, schedule):
    from sdlab.recipes import schedule_levels

    spec = CATALOG[sampler]
    scheduler = sdlab.make_scheduler(lab, sampler, schedule)
    training = S.TrainingSchedule.of(scheduler)
    for n in (5, 20):
        got = sdlab.plan(scheduler, n)
        plain = S.sigmas(schedule, n + 1 if spec.discard_penultimate else n, model=training)
        if spec.discard_penultimate:  # A1111 and ComfyUI: n+1 steps' levels, the next-to-last dropped
            plain = np.concatenate([plain[:-2], plain[-1:]])
        levels = got.sigmas[:-1] if spec.ends_at_sigma_min else got.sigmas  # (their corrector's last call)
        want = schedule_levels(schedule, n, training, discard_penultimate=spec.discard_penultimate,
                               ends_at_sigma_min=spec.ends_at_sigma_min)
        assert levels == pytest.approx(want, rel=2e-6)
        assert want[:-1] == pytest.approx(plain[:len(want) - 1], rel=1e-12)  # the formula, up to where it stops
        assert not got.notes
        # the UNet is asked about exactly those levels: fractional timesteps, never rounded
        assert got.timesteps[:len(levels) - 1] == pytest.approx(training.sigma_to_t(levels[:-1])[:len(got.timesteps)],
                                                                 rel=1e-5, abs=1e-3) or spec.order == 2


@pytest.mark.parametrize("schedule", ["align_your_steps", "kl_optimal", "polyexponential"])
def test_explicit_sigma_schedules_are_followed_exactly(lab, schedule):
    scheduler = sdlab.make_scheduler(lab, "Euler", schedule)
    expected = sdlab.sigmas(schedule, 10, model=S.TrainingSchedule(scheduler.alphas_cumprod.double().numpy()))
    assert sdlab.plan(scheduler, 10).sigmas == pytest.approx(expected, rel=1e-6)
    # a plain diffusers call follows it too: the scheduler carries the schedule
    _run(lab, scheduler, 10)
    assert lab.pipe.scheduler.sigmas.double().numpy() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun"])
def test_karras_with_another_rho_is_followed_too(lab, sampler):
    scheduler = sdlab.make_scheduler(lab, sampler, "karras", rho=3.0)
    # the config says Karras (diffusers' own is rho 7, its nearest version); the recipe keeps the rho
    assert scheduler.config.use_karras_sigmas and sdlab.recipe_of(scheduler).schedule_params == {"rho": 3.0}
    training = S.TrainingSchedule.of(scheduler)
    assert sdlab.plan(scheduler, 8).sigmas == pytest.approx(
        S.karras(8, training.sigma_min, training.sigma_max, rho=3.0), rel=1e-6)


def test_ddim_pitfalls_are_fixed_whatever_was_loaded_before(lab):
    from diffusers import DDIMScheduler

    bad = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        set_alpha_to_one=True, clip_sample=True)
    lab.pipe.scheduler = bad
    for source in (bad, lab, dict(bad.config)):
        ddim = sdlab.make_scheduler(source, "DDIM")
        assert ddim.config.set_alpha_to_one is False and ddim.config.clip_sample is False
        assert ddim.config.beta_schedule == "scaled_linear"
    # from_config alone carries the trap over (diffusers issues 1545, 6068): the reason sdlab sets these
    assert DDIMScheduler.from_config(bad.config).config.set_alpha_to_one is True


def test_dpmpp_2m_automatic_is_karras_like_a1111(lab):
    s = sdlab.make_scheduler(lab, "DPM++ 2M")
    recipe = sdlab.recipe_of(s)
    assert recipe.schedule == "karras" and recipe.via == "sdlab" and recipe.entry.route == "levels"
    assert s.config.algorithm_type == "dpmsolver++" and s.config.final_sigmas_type == "zero"
    training = S.TrainingSchedule.of(s)
    p = sdlab.plan(s, 10)
    assert p.sigmas[:-1] == pytest.approx(S.karras(10, training.sigma_min, training.sigma_max)[:-1], rel=1e-6)
    # as A1111's k-diffusion samplers, it starts from sigma_max x noise (in diffusers' VP form)
    assert p.init_noise_sigma == pytest.approx(training.sigma_max / np.sqrt(1 + training.sigma_max ** 2))
    sde = sdlab.make_scheduler(lab, "DPM++ 2M SDE")
    assert sdlab.recipe_of(sde).schedule == "exponential" and sde.config.final_sigmas_type == "zero"
    euler = sdlab.make_scheduler(lab, "Euler")
    # A1111's Euler uses evenly spaced timesteps (k-diffusion's get_sigmas), not SD 1.5's shipped "leading" spacing
    assert euler.config.timestep_spacing == "linspace" and lab.default_scheduler.config.timestep_spacing == "leading"


def test_model_config_is_kept(lab):
    cfg = dict(lab.default_scheduler.config)
    cfg["prediction_type"] = "v_prediction"
    for name in ("Euler", "DDIM", "DPM++ 2M", "Heun"):
        s = sdlab.make_scheduler(cfg, name)
        assert s.config.prediction_type == "v_prediction"
        assert s.config.beta_start == 0.00085 and s.config.beta_schedule == "scaled_linear"


def test_effective_config_report_shows_what_sdlab_set(lab):
    s = sdlab.make_scheduler(lab, "DDIM")
    changes = sdlab.effective_config(s, lab.default_scheduler)
    assert changes["class"] == ("PNDMScheduler", "DDIMScheduler")
    assert changes["clip_sample"] == ("(default True)", False)
    assert "beta_start" not in changes  # kept from the model
    text = sdlab.describe(s, lab.default_scheduler)
    assert text.startswith("DDIM, schedule DDIM (diffusers' own version of the schedule): DDIMScheduler")
    assert "clip_sample" in text
    ays = sdlab.describe(sdlab.make_scheduler(lab, "Euler", "align_your_steps"), lab.default_scheduler)
    assert "noise levels: None -> \"A1111's Align Your Steps via set_timesteps(sigmas=...)\"" in ays
    dpm = sdlab.describe(sdlab.make_scheduler(lab, "DPM++ 2M"), lab.default_scheduler)
    assert "A1111's Karras via the sigma-conversion step" in dpm and "use_exponential_sigmas" not in dpm
    assert "use_karras_sigmas: '(default False)' -> True" in dpm  # the config says what it is
    euler = sdlab.describe(sdlab.make_scheduler(lab, "Euler"), lab.default_scheduler)
    assert "timestep_spacing: 'leading' -> 'linspace'" in euler


def test_plan_maps_calls_to_steps_without_running_anything(lab):
    heun = sdlab.plan(sdlab.make_scheduler(lab, "Heun"), 4)
    assert list(heun.step_of_call) == [1, 1, 2, 2, 3, 3, 4]  # two calls a step, one for the last
    assert heun.sigma_after_call[1] == heun.sigmas[1] and heun.sigma_after_call[-1] == 0.0
    plms = sdlab.plan(sdlab.make_scheduler(lab, "PLMS"), 4)
    assert list(plms.step_of_call) == [1, 1, 2, 3, 4]  # the warm-up call belongs to step 1
    euler = sdlab.plan(sdlab.make_scheduler(lab, "Euler"), 4)
    assert list(euler.sigma_after_call) == list(euler.sigmas[1:]) and euler.variance_exploding
    assert not sdlab.plan(sdlab.make_scheduler(lab, "DDIM"), 4).variance_exploding


def test_plan_counts_unet_calls_like_the_pitfalls_say(lab):
    assert sdlab.plan(sdlab.make_scheduler(lab, "PLMS"), 10).nfe == 11  # one warm-up call more
    assert sdlab.plan(sdlab.make_scheduler(lab, "Heun"), 10).nfe == 19  # two per step, one at the end
    assert sdlab.plan(sdlab.make_scheduler(lab, "Euler"), 10).nfe == 10
    assert sdlab.plan(sdlab.make_scheduler(lab, "Heun"), 10).calls_per_step == pytest.approx(1.9)


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


def test_make_scheduler_for_plain_diffusers_users(lab):
    s = sdlab.make_scheduler(lab.pipe.scheduler.config, "dpmpp_2m", "Karras")
    assert type(s).__name__ == "SdlabDPMSolverMultistepScheduler"
    assert isinstance(s, __import__("diffusers").DPMSolverMultistepScheduler)
    spec, sched = resolve("Euler a", "automatic")
    assert (spec.name, sched) == ("Euler a", "uniform")
