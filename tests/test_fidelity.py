"""Names mean what A1111 and ComfyUI mean: sdlab's runs against k-diffusion, the sampler code both tools run.

k-diffusion's samplers are driven here with A1111's wrapping of the model (CFGDenoiser around
DiscreteEpsDDPMDenoiser, fractional timesteps) on the tiny model, from the same starting noise and, for the
noise levels, with k-diffusion's own schedule functions where it has them (A1111's Uniform is k-diffusion's
DiscreteSchedule.get_sigmas; Karras, Exponential and Polyexponential its get_sigmas_*). Where k-diffusion has
no such function (A1111's modules/sd_schedulers.py computes them), sdlab's schedule functions are used; those
are checked by hand against the formulas in test_noise_schedules.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdlab
from sdlab import noise_schedules as S
from sdlab.analysis import last_record_per_step
from sdlab import sampler_catalog as catalog
from sdlab.generation import initial_noise, prepare
from sdlab.settings import Settings

import kdiffusion

K, _ = kdiffusion.load()
PROMPT, NEGATIVE, CFG = "a lighthouse at dusk", "blurry", 6.0
K_SAMPLER = {"Euler": K.sample_euler, "Heun": K.sample_heun, "LMS": K.sample_lms, "DPM2": K.sample_dpm_2,
             "DPM++ 2M": K.sample_dpmpp_2m}
MATCHING = [s.name for s in catalog.samplers() if s.matches_a1111 and not s.stochastic]
# Relative tolerance on the final latents: the catalog's, with the reason beside it (sdlab.sampler_catalog);
# the one exception, LMS on schedules that crowd its first levels, is recognised by its noise gain below.
RTOL = catalog.FIDELITY_RTOL


def lms_noise_gain(sigmas) -> float:
    """How much LMS's update can amplify a small error in its derivatives, at the worst step: the sum of its
    coefficients' magnitudes (k-diffusion's linear_multistep_coeff) over the step size (1 for Euler)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    gains = []
    for i in range(len(sigmas) - 1):
        order = min(i + 1, 4)
        total = sum(abs(K.linear_multistep_coeff(order, sigmas, i, j)) for j in range(order))
        gains.append(total / abs(sigmas[i + 1] - sigmas[i]))
    return max(gains)


def tolerance(sampler: str, sigmas) -> float:
    if sampler == "LMS" and lms_noise_gain(sigmas) > catalog.LMS_CROWDED_GAIN:
        return catalog.LMS_CROWDED_RTOL
    return RTOL


def test_only_crowded_schedules_get_the_lms_tolerance():
    crowded = [s for s in catalog.CATALOG["LMS"].supported_schedules() if s != S.AUTOMATIC
               and lms_noise_gain(S.sigmas(s, 5)) > catalog.LMS_CROWDED_GAIN]
    assert crowded == ["linear_quadratic"] and lms_noise_gain(S.sigmas("karras", 5)) < 2


def test_every_sampler_that_claims_to_match_a1111_is_compared():
    assert set(MATCHING) == set(K_SAMPLER)


def _a1111_sigmas(denoiser, name: str, n: int, training: S.TrainingSchedule, discard: bool) -> torch.Tensor:
    """A1111's noise levels for a sampler: k-diffusion's functions where it has one, n+1 levels with the
    next-to-last dropped for discard_next_to_last_sigma samplers (modules/sd_samplers_kdiffusion.py)."""
    m = n + 1 if discard else n
    lo, hi = float(denoiser.model.sigma_min), float(denoiser.model.sigma_max)
    if name == "uniform":
        s = denoiser.model.get_sigmas(m)
    elif name == "karras":
        s = K.get_sigmas_karras(m, lo, hi, rho=7.0)
    elif name == "exponential":
        s = K.get_sigmas_exponential(m, lo, hi)
    elif name == "polyexponential":
        s = K.get_sigmas_polyexponential(m, lo, hi, rho=1.0)
    else:
        s = torch.as_tensor(S.sigmas(name, m, model=training))
    s = s.double()
    return torch.cat([s[:-2], s[-1:]]) if discard else s


def _both(lab, sampler: str, schedule: str, steps: int = 5, seed: int = 3):
    """sdlab's run and k-diffusion's latents for the same settings, and the levels k-diffusion ran."""
    settings = prepare(lab, Settings(prompt=PROMPT, negative_prompt=NEGATIVE, cfg=CFG, sampler=sampler,
                                     schedule=schedule, steps=steps, seed=seed, width=64, height=64)).settings
    run = lab.generate(settings, record_dtype=torch.float32)
    spec = catalog.CATALOG[sampler]
    denoiser = kdiffusion.CFGDenoiser(lab, PROMPT, NEGATIVE, CFG)
    sigmas = _a1111_sigmas(denoiser, settings.schedule, steps, S.TrainingSchedule.of(lab.default_scheduler),
                           spec.discard_penultimate)
    x = initial_noise(lab, settings).double() * sigmas[0]
    with torch.no_grad():
        theirs = K_SAMPLER[sampler](denoiser, x, sigmas.to(x.dtype), disable=True)
    return run, sigmas.numpy(), theirs.float()


def _latents_at(run, step: int) -> torch.Tensor:
    """The run's sample after ``step``, as x0 + sigma eps (k-diffusion's form)."""
    record = last_record_per_step(run)[step]
    sigma = float(run.plan.sigmas[step])
    return record.latents.float() / (1.0 if run.plan.variance_exploding else float(S.vp_scale(sigma)))


def _cases():
    for name in MATCHING:
        for schedule in catalog.CATALOG[name].supported_schedules():
            if schedule != S.AUTOMATIC:
                yield name, schedule


@pytest.mark.parametrize("sampler, schedule", list(_cases()))
def test_deterministic_samplers_compute_what_a1111_computes(lab, sampler, schedule):
    run, sigmas, theirs = _both(lab, sampler, schedule)
    if run.plan.notes:  # the one difference sdlab states: A1111's KL Optimal stops at sigma_min, diffusers goes on to 0
        assert schedule == "kl_optimal" and "without a last step to 0" in run.plan.notes[0], run.plan.notes
        assert run.plan.sigmas[-1] == 0 and run.problems[:1] == list(run.plan.notes)
        np.testing.assert_allclose(run.plan.sigmas[:-1], sigmas, rtol=1e-5, atol=1e-7)
        ours = _latents_at(run, len(sigmas) - 1)  # where A1111's run ends
    else:
        np.testing.assert_allclose(run.plan.sigmas, sigmas, rtol=1e-5, atol=1e-7)
        ours = run.final_latents
    err = (ours - theirs).abs().max() / theirs.abs().max()
    assert err < tolerance(sampler, sigmas), f"{sampler} / {schedule}: relative difference {err:.2e} from k-diffusion"


def test_a1111s_automatic_is_the_samplers_default_schedule(lab):
    for name in MATCHING:
        run, sigmas, theirs = _both(lab, name, "automatic")
        assert run.settings.schedule == catalog.CATALOG[name].default_schedule
        assert (run.final_latents - theirs).abs().max() / theirs.abs().max() < RTOL


def test_dpm2_drops_the_next_to_last_sigma_as_a1111_does(lab):
    plan = sdlab.plan(sdlab.make_scheduler(lab, "DPM2", "karras"), 10)
    eleven = S.sigmas("karras", 11, model=S.TrainingSchedule.of(lab.default_scheduler))
    np.testing.assert_allclose(plan.sigmas, np.concatenate([eleven[:-2], eleven[-1:]]), rtol=1e-6)
    assert plan.steps == 10 and plan.nfe == 19  # two calls a step, one for the last (to 0)


# --- the samplers that add noise --------------------------------------------------------------------------
STOCHASTIC = {"Euler a": K.sample_euler_ancestral, "DPM2 a": K.sample_dpm_2_ancestral,
              "DPM++ SDE": K.sample_dpmpp_sde, "DPM++ 2M SDE": K.sample_dpmpp_2m_sde,
              "DPM++ 2M SDE Heun": lambda *a, **k: K.sample_dpmpp_2m_sde(*a, solver_type="heun", **k),
              "DPM++ 3M SDE": K.sample_dpmpp_3m_sde}


def test_every_stochastic_a1111_sampler_is_compared():
    assert {s.name for s in catalog.samplers() if s.stochastic and s.a1111 and s.name != "LCM"} == set(STOCHASTIC)


@pytest.mark.parametrize("sampler", list(STOCHASTIC))
def test_stochastic_samplers_follow_a1111s_schedule(lab, sampler):
    spec = catalog.CATALOG[sampler]
    denoiser = kdiffusion.CFGDenoiser(lab, PROMPT, NEGATIVE, CFG)
    training = S.TrainingSchedule.of(lab.default_scheduler)
    plan = sdlab.plan(sdlab.make_scheduler(lab, sampler, "automatic"), 8)
    want = _a1111_sigmas(denoiser, spec.default_schedule, 8, training, spec.discard_penultimate).numpy()
    if spec.route == "spacing":  # Euler a: only a timestep spacing, said in its fidelity text
        assert spec.matches_a1111 is False and "spacing" in spec.fidelity
        np.testing.assert_allclose(plan.sigmas[[0, -2, -1]], want[[0, -2, -1]], rtol=1e-4)
    else:
        np.testing.assert_allclose(plan.sigmas, want, rtol=1e-5, atol=1e-7)


# Given the noise diffusers draws (the pipeline's generator, after the starting noise), k-diffusion's update
# must give the same latents where the catalog says "schedule and update are A1111's"; DPM++ SDE's Brownian
# tree is A1111's own (one tree per image seed, on float32 latents: modules/sd_samplers_kdiffusion.py).
SAME_NOISE_TOLERANCE = {"DPM++ 2M SDE": 1e-4, "DPM++ 2M SDE Heun": 1e-4, "DPM2 a": 1e-4,
                        # the tree is queried at sigmas that diffusers holds in float32, k-diffusion in float64:
                        # on Karras they differ by 1e-7 relative, and Brownian increments are not smooth in time
                        "DPM++ SDE": 1e-3}


@pytest.mark.parametrize("sampler", [*SAME_NOISE_TOLERANCE, "DPM++ 3M SDE"])
@pytest.mark.parametrize("schedule", ["karras", "exponential"])
def test_stochastic_updates_against_k_diffusion_with_the_same_noise(lab, sampler, schedule):
    from diffusers.utils.torch_utils import randn_tensor

    spec, seed, steps = catalog.CATALOG[sampler], 5, 6
    run = lab.generate(PROMPT, negative_prompt=NEGATIVE, cfg=CFG, sampler=sampler, schedule=schedule, steps=steps,
                       seed=seed, width=64, height=64, record=False)
    denoiser = kdiffusion.CFGDenoiser(lab, PROMPT, NEGATIVE, CFG)
    sigmas = _a1111_sigmas(denoiser, schedule, steps, S.TrainingSchedule.of(lab.default_scheduler),
                           spec.discard_penultimate)
    generator = lab.generator(seed)
    start = randn_tensor(run.final_latents.shape, generator=generator)
    x = start.double() * sigmas[0]
    if sampler == "DPM++ SDE":
        tree = K.BrownianTreeNoiseSampler(x.float(), sigmas[sigmas > 0].min().float(), sigmas.max().float(), seed=[seed])
        noise = lambda s, t: tree(s, t).double()  # noqa: E731
    else:
        noise = lambda s, t: randn_tensor(start.shape, generator=generator).double()  # noqa: E731
    with torch.no_grad():
        theirs = STOCHASTIC[sampler](denoiser, x, sigmas, disable=True, noise_sampler=noise).float()
    np.testing.assert_allclose(run.plan.sigmas, sigmas.numpy(), rtol=1e-5, atol=1e-7)
    err = ((run.final_latents - theirs).abs().max() / theirs.abs().max()).item()
    if sampler in SAME_NOISE_TOLERANCE:
        assert err < SAME_NOISE_TOLERANCE[sampler], f"{sampler} / {schedule}: {err:.2e} from k-diffusion"
    else:  # diffusers' DPM++ 3M SDE update is not k-diffusion's, and the catalog says so
        assert err > 1e-2 and spec.matches_a1111 is False and "update differs" in spec.fidelity


@pytest.mark.parametrize("sampler", list(STOCHASTIC))
def test_stochastic_samplers_add_noise_with_a1111s_statistics(lab, sampler):
    """Over 12 seeds, the final latents of sdlab's run and of k-diffusion's (with its own Brownian-tree or
    Gaussian noise) have the same spread: the standard deviation across seeds, averaged over the latent's
    elements, agrees within 20% (what 12 seeds and a 6-step run on random weights resolve), and the means
    agree within a fraction of it."""
    spec = catalog.CATALOG[sampler]
    schedule = "karras" if spec.route != "spacing" else "uniform"
    steps, seeds = 6, range(12)
    denoiser = kdiffusion.CFGDenoiser(lab, PROMPT, NEGATIVE, CFG)
    training = S.TrainingSchedule.of(lab.default_scheduler)
    sigmas = _a1111_sigmas(denoiser, schedule, steps, training, spec.discard_penultimate)
    ours, theirs = [], []
    for seed in seeds:
        run = lab.generate(PROMPT, negative_prompt=NEGATIVE, cfg=CFG, sampler=sampler, schedule=schedule,
                           steps=steps, seed=seed, width=64, height=64, record=False)
        ours.append(run.final_latents)
        x = initial_noise(lab, run.settings).double() * sigmas[0]
        torch.manual_seed(1000 + seed)  # k-diffusion's own noise: randn_like, or a Brownian tree seeded from torch
        with torch.no_grad():
            theirs.append(STOCHASTIC[sampler](denoiser, x, sigmas.to(x.dtype), disable=True).float())
    ours, theirs = torch.stack(ours), torch.stack(theirs)
    ratio = (ours.std(0).mean() / theirs.std(0).mean()).item()
    shift = ((ours.mean(0) - theirs.mean(0)).abs().mean() / theirs.std(0).mean()).item()
    assert 0.8 < ratio < 1.25, f"{sampler}: spread across seeds {ratio:.3f}x k-diffusion's"
    assert shift < 0.6, f"{sampler}: mean differs by {shift:.2f} standard deviations"


# --- names ----------------------------------------------------------------------------------------------
A1111_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                  "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
                  "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"]
COMFYUI_SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
                    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
                    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
                    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
                    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
                    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
                    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
A1111_SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
                   "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]
COMFYUI_SCHEDULES = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta",
                     "linear_quadratic", "kl_optimal"]


@pytest.mark.parametrize("name", A1111_SAMPLERS + COMFYUI_SAMPLERS)
def test_every_sampler_name_is_supported_or_refused_with_reason_and_nearest(name):
    try:
        spec, _ = catalog.parse_sampler(name)
    except ValueError as e:
        text = str(e)
        assert "cannot run in sdlab" in text and "Nearest:" in text, text
        nearest = text.split("Nearest: ")[1]
        assert any(s.name in nearest for s in catalog.samplers()), text
        return
    assert spec.name in catalog.CATALOG
    if name in A1111_SAMPLERS:
        assert spec.a1111 == name and spec.matches_a1111 is not None and spec.fidelity
    else:
        assert name in spec.comfy or name == "ddim", (name, spec.comfy)


def test_comfyui_names_map_to_the_right_variant():
    assert catalog.parse_sampler("uni_pc")[0].options["solver_type"] == "bh1"
    assert catalog.parse_sampler("uni_pc_bh2")[0].options["solver_type"] == "bh2"
    assert catalog.parse_sampler("dpmpp_sde")[0].scheduler_class == "DPMSolverSDEScheduler"
    three = catalog.parse_sampler("dpmpp_3m_sde")[0]
    assert three.options == {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    assert three.default_schedule == "exponential"
    with pytest.raises(ValueError) as e:  # not 'DPM2 a', which is another sampler
        catalog.parse_sampler("dpmpp_2s_ancestral")
    assert "DPM2 a'" not in str(e.value) and "no diffusers scheduler" in str(e.value)


@pytest.mark.parametrize("name", A1111_SCHEDULES + COMFYUI_SCHEDULES)
def test_every_schedule_name_is_known(name):
    concrete = S.resolve_schedule(name)
    assert concrete == S.AUTOMATIC or concrete in S.SCHEDULES


def test_sampler_table_carries_what_a_user_compares():
    for s in catalog.samplers():
        assert s.scheduler_class and isinstance(s.options, dict) and s.default_schedule
        assert s.fidelity, s.name
        assert (s.matches_a1111 is None) == (s.a1111 is None), s.name


def test_unipc_is_bh1_and_stops_at_sigma_min_like_a1111(lab):
    run = lab.generate(PROMPT, sampler="UniPC", steps=8, seed=2)
    sched = sdlab.make_scheduler(lab, "UniPC")
    assert sched.config.solver_type == "bh1" and sched.config.solver_order == 3
    sigma_min = S.TrainingSchedule.of(lab.default_scheduler).sigma_min
    assert run.plan.sigmas[-1] == pytest.approx(sigma_min, rel=1e-5)
    assert torch.isfinite(run.final_latents).all()
