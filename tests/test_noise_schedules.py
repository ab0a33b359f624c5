"""Schedule formulas against values worked out by hand (scalar arithmetic), endpoints and ordering."""
from __future__ import annotations

import math

import numpy as np
import pytest

import sdlab
from sdlab import noise_schedules as S

SD = S.TrainingSchedule.stable_diffusion()


def test_stable_diffusion_sigma_range_matches_the_reference():
    # SD's scaled_linear betas 0.00085 .. 0.012 over 1000 steps (its scheduler_config.json) give these
    assert SD.sigma_min == pytest.approx(0.029167, abs=2e-5)
    assert SD.sigma_max == pytest.approx(14.6146, abs=2e-4)
    assert SD.num_train_timesteps == 1000


def test_karras_by_hand():
    s = S.karras(3, 0.1, 10.0, rho=7.0)
    assert s == pytest.approx([10.0, 1.4507321135661928, 0.1, 0.0], rel=1e-12)


def test_exponential_by_hand():
    s = S.exponential(4, 0.1, 10.0)
    assert s == pytest.approx([10.0, 2.154434690031884, 0.46415888336127786, 0.1, 0.0], rel=1e-12)


def test_polyexponential_by_hand_and_rho_1_is_exponential():
    assert S.polyexponential(3, 0.1, 10.0, rho=2.0) == pytest.approx([10.0, 0.31622776601683805, 0.1, 0.0])
    assert S.polyexponential(7, 0.1, 10.0) == pytest.approx(S.exponential(7, 0.1, 10.0))


def test_kl_optimal_by_hand():
    # atan(0.1) + atan(10) = pi/2, so the midpoint is tan(pi/4) = 1
    # A1111: n+1 levels, ending at sigma_min (no 0); ComfyUI: n levels, then 0
    assert S.kl_optimal(2, 0.1, 10.0) == pytest.approx([10.0, 1.0, 0.1])
    assert S.kl_optimal_comfyui(3, 0.1, 10.0) == pytest.approx([10.0, 1.0, 0.1, 0.0])


def test_vp_by_hand():
    s = S.vp(2)
    assert s == pytest.approx([152.1669702839464, 0.010485992786706403, 0.0], rel=1e-9)


def test_beta_endpoints_and_symmetry():
    s = S.beta(5, 0.1, 10.0)
    assert s[0] == pytest.approx(10.0) and s[-2] == pytest.approx(0.1) and s[-1] == 0
    # alpha == beta makes the quantiles symmetric about the middle of the range
    assert s[2] == pytest.approx((10.0 + 0.1) / 2)
    assert s[1] + s[3] == pytest.approx(10.0 + 0.1)


def test_align_your_steps_is_a1111s():
    # A1111 (modules/sd_schedulers.py): the 11 published levels for 11 steps, else interpolated to n, then 0
    assert S.align_your_steps(11)[:-1] == pytest.approx(S.AYS_SD15) and S.align_your_steps(11)[-1] == 0
    assert S.align_your_steps(11, "sdxl")[:-1] == pytest.approx(S.AYS_SDXL)
    s21 = S.align_your_steps(21)
    assert len(s21) == 22 and s21[-1] == 0
    assert s21[0] == pytest.approx(14.615) and s21[2] == pytest.approx(6.475)  # every other level is the table's
    # between two table levels the interpolation is log-linear: the geometric mean
    assert s21[1] == pytest.approx(math.sqrt(14.615 * 6.475))
    assert S.align_your_steps(10)[-2] == pytest.approx(0.029)  # 10 steps end at the table's lowest level


def test_timestep_schedules_on_the_training_schedule():
    # uniform: timesteps 999 and 0 -> sigma_max and sigma_min
    assert S.uniform(2, SD) == pytest.approx([SD.sigma_max, SD.sigma_min, 0.0])
    # ddim_uniform: timesteps 1, 51, ..., 951 for 20 steps; range(1, 1000, 33) for 30: 31 of them
    s = S.ddim_uniform(20, SD)
    assert len(s) == 21 and s[0] == pytest.approx(SD.sigmas[951]) and s[-2] == pytest.approx(SD.sigmas[1])
    s30 = S.ddim_uniform(30, SD)
    assert len(s30) == 32 and s30[0] == pytest.approx(SD.sigmas[991]) and s30[0] == pytest.approx(13.93, abs=5e-3)
    # simple: every 250th training sigma from the top for 4 steps
    assert S.simple(4, SD)[:-1] == pytest.approx(SD.sigmas[[999, 749, 499, 249]])
    # sgm_uniform: 5 points from 999 to 0, the last dropped
    assert S.sgm_uniform(4, SD)[:-1] == pytest.approx(SD.t_to_sigma([999, 749.25, 499.5, 249.75]))


@pytest.mark.parametrize("name", [s.name for s in S.schedules()])
@pytest.mark.parametrize("n", [1, 2, 10, 33])
def test_every_schedule_has_decreasing_levels_ending_where_its_source_ends(name, n):
    s = sdlab.sigmas(name, n)
    assert np.all(np.diff(s) < 0), s
    if name == "kl_optimal":  # A1111's: n+1 levels ending at sigma_min
        assert len(s) == n + 1 and s[-1] == pytest.approx(SD.sigma_min)
    elif name == "ddim_uniform":  # range(1, T, T // n): at least n timesteps
        assert len(s) == len(range(1, 1000, 1000 // n)) + 1 >= n + 1 and s[-1] == 0.0
    elif name == "beta_comfyui":  # ComfyUI's: merged where rounding repeats a timestep
        assert 2 <= len(s) <= n + 1 and s[-1] == 0.0
    else:
        assert len(s) == n + 1 and s[-1] == 0.0
    if name not in ("vp",):
        assert s[0] <= SD.sigma_max * (1 + 1e-4)  # AYS publishes 14.615 for 14.6146


def test_beta_is_a1111s_in_sigma_space_and_comfyuis_on_timesteps():
    # the figures of A1111's and ComfyUI's own code for 10 steps on SD 1.5
    assert S.beta(10, SD.sigma_min, SD.sigma_max)[:3] == pytest.approx([14.61, 13.93, 12.49], abs=0.01)
    assert S.beta_comfyui(10, SD)[:3] == pytest.approx([14.61, 11.54, 7.37], abs=0.01)
    ts = np.rint(__import__("scipy").stats.beta.ppf(1 - np.linspace(0, 1, 10, endpoint=False), 0.6, 0.6) * 999)
    assert S.beta_comfyui(10, SD)[:-1] == pytest.approx(SD.sigmas[ts.astype(int)])
    assert sdlab.noise_schedules.resolve_schedule("Beta") == "beta" and S.resolve_schedule("comfyui beta") == "beta_comfyui"


def test_linear_quadratic_is_comfyuis():
    s = S.linear_quadratic(4, SD.sigma_min, SD.sigma_max)
    # linear steps 4 // 2 = 2: 1 - [0, 0.0125] ..., then quadratic up to 1, times sigma_max
    assert s[:2] == pytest.approx(SD.sigma_max * np.array([1.0, 1 - 0.0125])) and s[-1] == 0


def test_conversions_round_trip_and_agree():
    t = np.array([0.0, 10.5, 500.0, 998.25])
    assert SD.sigma_to_t(SD.t_to_sigma(t)) == pytest.approx(t, abs=1e-6)
    assert SD.t_to_sigma(999) == pytest.approx(SD.sigma_max)
    sig = np.array([0.5, 1.0, 2.0])
    assert S.alpha_bar(sig) == pytest.approx([0.8, 0.5, 0.2])
    assert S.snr(sig) == pytest.approx([4.0, 1.0, 0.25])
    assert S.log_snr(sig) == pytest.approx(np.log([4.0, 1.0, 0.25]))
    # alpha-bar from a sigma equals the training alpha-bar at that timestep
    assert S.alpha_bar(SD.sigmas[[0, 400, 999]]) == pytest.approx(SD.alphas_cumprod[[0, 400, 999]])


def test_training_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    for cfg in ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                {"beta_schedule": "linear"}, {"beta_schedule": "squaredcos_cap_v2"},
                {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                 "rescale_betas_zero_snr": True}):
        ours = S.TrainingSchedule.from_config(cfg).alphas_cumprod
        theirs = DDPMScheduler(**cfg).alphas_cumprod.double().numpy()
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-7), cfg


def test_names_and_errors():
    assert S.resolve_schedule("Karras") == "karras"
    assert S.resolve_schedule("SGM Uniform") == "sgm_uniform"
    assert S.resolve_schedule("normal") == "uniform"
    assert S.resolve_schedule("Align Your Steps") == "align_your_steps"
    assert S.resolve_schedule("Automatic") == "automatic"
    with pytest.raises(ValueError, match="Did you mean 'karras'"):
        S.resolve_schedule("karas")
    with pytest.raises(ValueError, match="takes no parameter"):
        sdlab.sigmas("exponential", 5, rho=3)
    with pytest.raises(ValueError, match="n must be a whole number from 1"):
        sdlab.sigmas("karras", 0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sdlab.sigmas("karras", 5, 2.0, 1.0)
    with pytest.raises(ValueError, match="depends on the sampler"):
        sdlab.sigmas("automatic", 5)
    assert {s.name for s in sdlab.schedules()} >= {"uniform", "karras", "exponential", "polyexponential",
                                                    "sgm_uniform", "simple", "ddim_uniform", "kl_optimal",
                                                    "align_your_steps", "beta"}
