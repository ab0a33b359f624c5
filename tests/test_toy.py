"""The teaching model: its data, its exact denoiser (against brute force), its words, and that real runs
of every sampler land on its pictures as the prompt asks; the forward process; sampler accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdlab
from sdlab import noise_schedules as S
from sdlab.sampler_catalog import CATALOG
from sdlab.toy import data as D

SIZE = 128  # 16 x 16 latents: quick, and every picture is still distinct


@pytest.fixture(scope="module")
def small():
    return sdlab.toy.dataset(SIZE, SIZE)


def _attrs(ds, latents):
    index, distance = ds.nearest(latents)
    return ds.attributes[index], distance


# --- data ------------------------------------------------------------------------------------------
def test_dataset_holds_432_distinct_pictures_with_their_attributes():
    ds = sdlab.toy.dataset()
    assert len(ds) == 432 and ds.latents.shape == (432, 4, 64, 64)
    assert ds.images.shape == (432, 512, 512, 3) and ds.images.dtype == np.uint8
    assert {tuple(a.values()) for a in ds.attributes} == set(__import__("itertools").product(*D.GROUPS.values()))
    assert {"red", "circle", "left", "top", "small"} <= set(ds.vocabulary)
    flat = ds.latents.reshape(432, -1).double()
    gaps = torch.cdist(flat, flat) + torch.eye(432) * 1e9
    assert gaps.min() > 1.0  # no two pictures alike
    # a picture is its latents decoded: a red circle is red where the circle is and background elsewhere
    i = ds.find(shape="circle", colour="red", column="left", row="top", size="large")
    assert len(i) == 1
    img = ds.images[i[0]]
    centre, corner = img[128, 128].astype(int), img[500, 500].astype(int)
    assert centre[0] > 180 and centre[1] < 80 and centre[2] < 80
    assert np.abs(corner - np.array(D.BACKGROUND_RGB) * 255).max() < 3
    assert (np.asarray(ds.images[i[0]:i[0] + 1])[0] == img).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        sdlab.toy.dataset(100, 512)
    with pytest.raises(ValueError, match="attributes are shape, colour"):
        ds.find(hue="red")


def test_decoder_map_is_exact_at_the_six_colours_and_the_approx_preview_uses_it():
    for colour, rgb in D.COLOURS_RGB.items():
        z = torch.zeros(1, 4, 1, 1)
        z[0, :3, 0, 0] = torch.as_tensor(D.LATENT_SCALE * D.colour_latent(colour))
        z[0, 3] = D.LATENT_SCALE  # inside the shape
        out = D.latent_to_rgb(z)[0, :, 0, 0]
        assert torch.allclose(out, 2 * torch.tensor(rgb) - 1, atol=2e-3), colour
    lat = sdlab.toy.dataset(64, 64).latents[7]
    approx = sdlab.previews.approx_rgb(lat, "toy")
    assert approx.shape == (8, 8, 3) and (approx == D.to_uint8(D.latent_to_rgb(lat[None]))[0]).all()
    with pytest.raises(sdlab.previews.PreviewUnavailable, match="no TAESD"):
        sdlab.previews.load_taesd("toy")


# --- the exact denoiser ----------------------------------------------------------------------------
def _brute_force_x0(x_vp, t, allowed, weight, f):
    """Posterior mean over every picture, written out directly in float64."""
    mu = torch.from_numpy(D.LATENT_SCALE * f.latents).reshape(len(f.mask_of), -1)
    sigma = float(S.TrainingSchedule.stable_diffusion().t_to_sigma(t))
    a = 1 / np.sqrt(1 + sigma ** 2)
    x = x_vp.reshape(len(x_vp), -1)
    log_prior = weight * torch.from_numpy(allowed @ f.onehot.T)
    d2 = ((x[:, None, :] - a * mu[None]) ** 2).sum(-1)
    w = torch.softmax(log_prior - d2 / (2 * (1 - a * a)), dim=1)
    return (w @ mu).reshape(x_vp.shape), sigma, a


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("t", [0.0, 137.5, 500.0, 871.25, 999.0])
def test_denoiser_matches_a_brute_force_posterior_mean(prediction_type, t):
    pipe = sdlab.toy.build_toy_pipeline(prediction_type=prediction_type)
    f = D.factors(8, 8)
    prompts = ["", "a small red star", "green circles on the left"]
    ehs = pipe.text_encoder(pipe.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids)[0].double()
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(int(t)), dtype=torch.float64)
    out = pipe.unet(x, torch.tensor(t), encoder_hidden_states=ehs, return_dict=False)[0]
    # the per-token encoding, reduced by the UNet, must mean what the prompt says as a whole (allowed_for)
    allowed = np.stack([sdlab.toy.allowed_for(p) for p in prompts])
    x0, sigma, a = _brute_force_x0(x, t, allowed, pipe.unet.config.prompt_weight, f)
    s_vp = np.sqrt(1 - a * a)
    eps = (x - a * x0) / s_vp
    expected = eps if prediction_type == "epsilon" else a * eps - s_vp * x0
    assert out.dtype == torch.float64
    assert torch.allclose(out, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


def test_denoiser_at_the_ends_of_the_noise_range(small):
    unet = sdlab.toy.build_toy_pipeline().unet
    red_circle = torch.as_tensor(sdlab.toy.allowed_for("a red circle"))[None, None].double()
    everything = torch.ones_like(red_circle)
    # very small noise: the nearest picture, whatever the prompt
    j = small.find(shape="square", colour="blue", column="right", row="bottom", size="small")[0]
    near = small.latents[j].double()[None] + 1e-3 * torch.randn(1, 4, 16, 16, dtype=torch.float64)
    for ehs in (red_circle, everything):
        assert torch.allclose(unet.denoise(near, 1e-3, ehs), small.latents[j].double()[None], atol=1e-6)
    # very large noise: the prior mean, over all pictures for the empty prompt, tilted to red circles otherwise
    far = 1e4 * torch.randn(1, 4, 16, 16, dtype=torch.float64)
    mu = small.latents.double()
    assert torch.allclose(unet.denoise(far, 1e6, everything)[0], mu.mean(0), atol=1e-6)
    w = torch.as_tensor(np.exp(unet.config.prompt_weight * (red_circle[0, 0].numpy() @ D.factors(16, 16).onehot.T)))
    tilted = (w[:, None, None, None] * mu).sum(0) / w.sum()
    assert torch.allclose(unet.denoise(far, 1e6, red_circle)[0], tilted, atol=1e-6)
    red = [i for i, a in enumerate(small.attributes) if a["colour"] == "red" and a["shape"] == "circle"]
    assert float(w[red[0]] / w.min()) == pytest.approx(np.exp(2 * unet.config.prompt_weight))


# --- words -----------------------------------------------------------------------------------------
def test_prompt_words_select_attributes():
    allowed = dict(zip(D.VALUES, sdlab.toy.allowed_for("A big RED circle, top center!")))
    assert allowed[("colour", "red")] == 1 and allowed[("colour", "blue")] == 0
    assert allowed[("size", "large")] == 1 and allowed[("size", "small")] == 0
    assert allowed[("row", "top")] == 1 and allowed[("row", "middle")] == 0
    assert allowed[("column", "center")] == 1 and allowed[("column", "left")] == 0  # "center" fills the free axis
    assert all(sdlab.toy.allowed_for(""))  # the empty prompt allows everything
    assert sdlab.toy.unknown_words("a watercolor fox, red fox") == ["watercolor", "fox"]


def test_unknown_words_are_ignored_with_a_notice_naming_them(toy):
    with pytest.warns(sdlab.SdlabNotice, match=r"does not know the words 'watercolor', 'fox' in the prompt, so it "
                                                r"draws as if they were not there \(sdlab.toy.vocabulary\(\)"):
        run = toy.generate("a watercolor fox, red circle", steps=3, seed=1, width=64, height=64, record=False)
    assert len(run.problems) == 1 and "watercolor" in run.problems[0]
    plain = toy.generate("red circle", steps=3, seed=1, width=64, height=64, record=False)
    assert torch.equal(run.final_latents, plain.final_latents) and not plain.problems
    ids = toy.pipe.tokenizer("a fox").input_ids
    assert ids[2] == toy.pipe.tokenizer.unk_token_id


# --- the model as sdlab loads it ------------------------------------------------------------------
def test_load_toy(clean_registry):
    with pytest.warns(sdlab.SdlabNotice, match="teaching model.*draws only its own 432 pictures"):
        lab = sdlab.load("toy")
    assert lab.kind == "toy" and lab.family == "toy" and lab.is_toy and not lab.is_tiny
    assert type(lab.pipe).__name__ == "StableDiffusionPipeline" and lab.prediction_type == "epsilon"
    assert sdlab.load("toy") is lab and "draws only its own pictures" in repr(lab)
    assert lab.pipe.vae_scale_factor == 8 and lab.pipe.unet.config.sample_size * 8 == 512
    v = sdlab.load("toy-v")
    assert v.prediction_type == "v_prediction" and v.pipe.unet.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("sampler", list(CATALOG))
def test_every_sampler_runs_on_the_toy_and_is_bit_identical_to_a_plain_call(toy, sampler):
    run = toy.generate("a red star", negative_prompt="small", sampler=sampler, steps=4, seed=11, cfg=7.0,
                       width=SIZE, height=SIZE, preview="approx")
    toy.pipe.scheduler = sdlab.make_scheduler(toy, sampler, seed=11)
    plain = toy.pipe("a red star", negative_prompt="small", guidance_scale=7.0, num_inference_steps=4,
                     width=SIZE, height=SIZE, generator=torch.Generator().manual_seed(11)).images[0]
    assert run.image.tobytes() == plain.tobytes() and run.preview.shape == (16, 16, 3)


DETERMINISTIC = [s.name for s in CATALOG.values() if not s.stochastic]


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_runs_end_on_a_picture_with_the_prompts_attributes(toy, small, sampler):
    for seed, (prompt, negative) in enumerate([("a red star", ""), ("a small circle at the top", "blue"),
                                               ("a large square on the left", "green"), ("a purple shape", "star")]):
        run = toy.generate(prompt, negative_prompt=negative, sampler=sampler, steps=25, seed=seed, cfg=7.0,
                           width=SIZE, height=SIZE, record=False)
        attrs, distance = _attrs(small, run.final_latents[0])
        # DDIM and PLMS end at sigma_min rather than 0, so their latents keep that much noise
        assert distance < 0.05, (sampler, prompt, distance)
        allowed = dict(zip(D.VALUES, sdlab.toy.allowed_for(prompt)))
        assert all(allowed[(g, v)] for g, v in attrs.items()), (sampler, prompt, attrs)
        if negative:
            assert negative not in attrs.values(), (sampler, negative, attrs)


def test_a_negative_prompt_pushes_its_attribute_away(toy, small):
    colours = {"with": [], "without": []}
    for seed in range(6):
        for key, negative in (("with", "red"), ("without", "")):
            run = toy.generate("a circle", negative_prompt=negative, sampler="DPM++ 2M", steps=20, seed=seed, cfg=4.0,
                               width=SIZE, height=SIZE, record=False)
            colours[key].append(_attrs(small, run.final_latents[0])[0]["colour"])
    assert "red" not in colours["with"] and colours["with"] != colours["without"]


def test_cfg_scale_one_is_the_conditional_model_and_higher_follows_the_prompt_more(toy, small):
    def hits(cfg):
        n = 0
        for seed in range(8):
            run = toy.generate("a small purple triangle at the bottom", sampler="Euler", steps=20, seed=seed, cfg=cfg,
                               width=SIZE, height=SIZE, record=False)
            a = _attrs(small, run.final_latents[0])[0]
            n += (a["colour"], a["shape"], a["size"], a["row"]) == ("purple", "triangle", "small", "bottom")
        return n
    assert hits(1.0) < hits(7.0) == 8


# --- the forward process --------------------------------------------------------------------------
def test_add_noise_is_the_training_forward_process(toy, small):
    x0 = small.latents[3]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = sdlab.add_noise(x0, sigma=[0.0, 1.0, 14.6], seed=5)
    assert z.shape == (3, 4, 16, 16) and torch.allclose(z[0], x0, atol=1e-7)
    a = 1 / np.sqrt(2)
    assert torch.allclose(z[1], (a * x0.double() + a * noise).float(), atol=1e-6)
    # a training timestep is the sigma the model's schedule gives it
    training = S.TrainingSchedule.from_config(toy.default_scheduler.config)
    by_t = sdlab.add_noise(x0, timestep=500, seed=5, lab=toy)
    assert torch.allclose(by_t, sdlab.add_noise(x0, sigma=float(training.sigmas[500]), seed=5), atol=1e-6)
    # a picture is encoded with the model's VAE first
    ds = sdlab.toy.dataset()
    picture = ds.images[200]
    from_image = sdlab.add_noise(picture, sigma=0.0, lab=toy)
    assert ds.nearest(from_image[0])[0] == 200
    with pytest.raises(ValueError, match="exactly one of sigma"):
        sdlab.add_noise(x0, sigma=1.0, timestep=3)
    with pytest.raises(ValueError, match="pass lab="):
        sdlab.add_noise(picture, sigma=1.0)
    with pytest.raises(ValueError, match="0 .. 999"):
        sdlab.add_noise(x0, timestep=1000, lab=toy)


# --- sampler accuracy -----------------------------------------------------------------------------
# One schedule per deterministic sampler: the error must fall as steps grow on every one of them (sdlab gives
# each scheduler A1111's noise levels exactly, fractional timesteps included, so none is inconsistent).
CONSISTENT = {"Euler": "karras", "Heun": "karras", "LMS": "karras", "DPM2": "karras", "DPM++ 2M": "karras",
              "UniPC": "uniform", "UniPC bh2": "karras", "DEIS": "karras", "DDIM": "ddim_uniform",
              "PLMS": "ddim_uniform"}


def test_every_deterministic_sampler_is_measured():
    assert set(CONSISTENT) == set(DETERMINISTIC)


@pytest.fixture(scope="module")
def study():
    lab = sdlab.load("toy")
    lab.pipe.set_progress_bar_config(disable=True)
    by_schedule: dict[str, list[str]] = {}  # one study per schedule: its samplers share the references
    for name, schedule in CONSISTENT.items():
        by_schedule.setdefault(schedule, []).append(name)
    parts = [sdlab.sampler_accuracy(lab, names, [schedule], [10, 20, 40], prompt="a red circle", seed=1,
                                    width=SIZE, height=SIZE) for schedule, names in by_schedule.items()]
    parts.append(sdlab.sampler_accuracy(lab, ["Euler", "DPM++ 2M"], ["karras"], [10, 20, 40, 80], prompt="a red circle",
                                        seed=1, width=SIZE, height=SIZE))
    return parts


@pytest.mark.parametrize("sampler", list(CONSISTENT))
def test_error_falls_as_nfe_grows(study, sampler):
    rows = [r for part in study[:-1] for r in part.rows if r.sampler == sampler]
    errors = [r.error for r in sorted(rows, key=lambda r: r.nfe)]
    assert len(errors) == 3 and errors[0] > errors[1] > errors[2], errors
    assert errors[-1] > 100 * study[0].reference_error  # far above what the reference resolves


def test_dpmpp_2m_beats_euler_at_equal_nfe_and_orders_are_measured(study):
    both = study[-1]
    lines = {s: {r.nfe: r.error for r in rows} for (s, _), rows in both.lines().items()}
    assert all(lines["DPM++ 2M"][n] < lines["Euler"][n] for n in (10, 20, 40, 80))
    assert -1.5 < both.slope("Euler", "karras") < -0.7 and both.slope("DPM++ 2M", "karras") < -1.5
    ref = both.references[0]
    assert ref.estimated_error < 1e-7 and "DOP853" in ref.method and ref.evaluations > 0


def test_reference_agrees_with_a_many_step_heun_run(toy):
    # the real-model path (Heun in log sigma) converges on the toy's exact reference
    from sdlab.accuracy import _dop853, _heun
    from sdlab.denoiser import Denoiser

    d = Denoiser(toy, "a red circle", "", 7.0)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 14.6
    exact = _dop853(d, start, 14.6, 0.03, rtol=1e-10, atol=1e-12)
    errors = [float((_heun(d, start, 14.6, 0.03, n) - exact).pow(2).mean().sqrt()) for n in (50, 100, 200)]
    assert errors[0] > errors[1] > errors[2] and errors[1] / errors[2] == pytest.approx(4, rel=0.3)  # 2nd order


def test_stochastic_samplers_and_bad_steps_are_refused(toy):
    with pytest.raises(ValueError, match="Euler a is stochastic.*measures ODE solvers: DPM\\+\\+ 2M"):
        sdlab.sampler_accuracy(toy, ["Euler a"], steps=[10])
    with pytest.raises(ValueError, match="steps must be a whole number from 2"):
        sdlab.sampler_accuracy(toy, ["Euler"], steps=[1])
    skipped = sdlab.sampler_accuracy(toy, ["DDIM"], ["karras", "automatic"], [4], width=64, height=64)
    assert ("DDIM", "karras") in skipped.skipped and len(skipped.rows) == 1


def test_plot_accuracy(study):
    from sdlab import plots

    drawn = plots.plot_accuracy(study[-1])
    assert set(drawn.artists) == {("Euler", "karras"), ("DPM++ 2M", "karras")}
    assert list(drawn.artists["Euler", "karras"].get_xdata()) == [10, 20, 40, 80]
    assert "slope" in drawn.ax.get_legend().get_texts()[0].get_text()


def test_on_a_trained_model_the_reference_is_a_many_step_run(tiny):
    tiny.pipe.set_progress_bar_config(disable=True)
    study = sdlab.sampler_accuracy(tiny, ["Euler", "DPM++ 2M"], ["uniform"], [4, 8], prompt="a cat", seed=2,
                                   reference_steps=40, width=32, height=32)
    assert [r.steps for r in study.rows] == [4, 8, 4, 8] and all(np.isfinite(r.error) for r in study.rows)
    ref = study.references[0]
    assert ref.method.startswith("Heun, 40 steps") and ref.evaluations == 2 * (40 + 20)
    assert ref.estimated_error < min(r.error for r in study.rows)


def test_one_predicate_says_which_model_is_the_teaching_model(toy, tiny):
    from sdlab.toy import is_teaching_model

    assert is_teaching_model(toy) and is_teaching_model(toy.pipe) and is_teaching_model(toy.pipe.unet)
    assert not any(is_teaching_model(x) for x in (tiny, tiny.pipe, tiny.pipe.unet, None, "toy"))
    assert toy.is_toy and not tiny.is_toy
    from sdlab.denoiser import Denoiser

    assert Denoiser(toy).exact and not Denoiser(tiny).exact


def test_the_final_column_says_whether_the_run_drew_the_references_picture(toy):
    # at this seed, 5 steps of DPM++ 2M on Uniform overshoot and land on another picture; 40 steps draw the
    # picture a 160-step UniPC run draws. Checked independently, by nearest picture. (64 px: a quick solve.)
    kw = dict(prompt="a red circle", seed=3, width=64, height=64)
    study = sdlab.sampler_accuracy(toy, ["DPM++ 2M"], ["uniform"], [5, 40], progress=False, **kw)
    ds = sdlab.toy.dataset(64, 64)
    truth = ds.nearest(toy.generate(sampler="UniPC", schedule="uniform", steps=160, **kw).final_latents[0])[0]
    verdicts = {}
    for row in study.rows:
        drawn = ds.nearest(toy.generate(sampler=row.sampler, schedule=row.schedule, steps=row.steps, **kw).final_latents[0])[0]
        assert row.same_picture == (drawn == truth), (row, drawn, truth)
        verdicts[row.sampler, row.steps] = row.same_picture
    assert verdicts[("DPM++ 2M", 5)] is False and verdicts[("DPM++ 2M", 40)] is True
    table = repr(study).splitlines()
    assert table[0].split()[-1] == "final" and {line.split()[-1] for line in table[1:3]} == {"same", "other"}
