"""A1111's noise (sdlab.rng): Philox 4x32-10 against its published answers, NV noise derived by hand, its
statistics, variation seeds, seed resize, ENSD, batches, and the settings' round trip through infotexts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdlab
from sdlab import rng as R

SMALL = dict(steps=3, seed=5, width=64, height=64)

# Random123's known-answer vectors for Philox 4x32-10 (its tests/kat_vectors, from Salmon et al. 2011):
# counter, key -> output; the third is the leading hex digits of pi.
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_gives_random123s_known_answers(counter, key, expected):
    out = R.philox4x32_10(np.array(counter, dtype=np.uint64)[:, None], np.array(key, dtype=np.uint64)[:, None])
    assert tuple(int(v) for v in out[:, 0]) == expected


def _philox_scalar(counter, key):
    """Philox 4x32-10 one word at a time with Python integers, straight from the paper's round function."""
    c, (k0, k1) = list(counter), key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
    return c


def _box_muller(x, y):
    """cuRAND's transform with its single-precision constants, in double precision, rounded to float32."""
    inv, inv_2pi = float(np.float32(2.3283064e-10)), float(np.float32(2.3283064e-10) * np.float32(6.2831855))
    u, v = x * inv + inv / 2, y * inv_2pi + inv_2pi / 2
    return float(np.float32(math.sqrt(-2 * math.log(u)) * math.sin(v)))


def test_the_scalar_reference_agrees_with_the_published_answers():
    for counter, key, expected in KAT:
        assert tuple(_philox_scalar(counter, key)) == expected


def test_nv_noise_is_philox_then_box_muller_per_element_and_per_call():
    # element i of the generator's k-th draw: counter (k, 0, i, 0), key (seed low, seed high)
    seed = 0x1234_5678_9ABC
    g = R.NVGenerator(seed)
    first, second = g.randn((2, 3, 5)), g.randn((7,))
    key = (seed & 0xFFFFFFFF, seed >> 32)
    for call, draw in ((0, first.flatten()), (1, second)):
        for i in sorted({0, 1, min(13, len(draw) - 1), len(draw) - 1}):
            w = _philox_scalar((call, 0, i, 0), key)
            assert float(draw[i]) == _box_muller(w[0], w[1]), (call, i)
    # seed 0's first number comes from the first published answer's words 0x6627e8d5 and 0xe169c58d:
    # u = 0.399046, v = 5.532472 rad, sqrt(-2 ln u) sin v = -0.924662
    assert float(sdlab.noise(0, (1, 1, 1), "nv")) == _box_muller(0x6627E8D5, 0xE169C58D)
    # and what a GPU prints for torch.manual_seed(0); torch.randn(8, 10, device="cuda") (the first 12, to the
    # 4 decimals torch prints: as a public CUDA lecture notebook shows them, from both Python and libtorch)
    gpu = [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284, -1.0745, -0.3631, -1.6711, 2.2655]
    assert np.allclose(sdlab.noise(0, (1, 8, 10), "nv").flatten()[:12].numpy(), gpu, atol=5e-5)


def test_nv_noise_looks_like_standard_normal_noise():
    """Fixed seeds, so each verdict is the same on every run; the bounds are 5 standard errors (n = 16384)."""
    from scipy import stats

    x = sdlab.noise(1234, (4, 64, 64), "nv").double().flatten()
    n = len(x)
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert stats.kstest(x.numpy(), "norm").pvalue > 1e-3
    for other in (1235, 1234 + 2 ** 32):  # the neighbouring seed, and one that differs in the key's high word
        y = sdlab.noise(other, (4, 64, 64), "nv").double().flatten()
        assert abs(float(np.corrcoef(x, y)[0, 1])) < 5 / math.sqrt(n)
    # neighbouring elements of one draw are independent too
    assert abs(float(np.corrcoef(x[:-1], x[1:])[0, 1])) < 5 / math.sqrt(n)


def test_cpu_noise_is_torchs_and_a_batch_seeds_each_image():
    batch = sdlab.noise(7, (3, 4, 8, 8))
    for i in range(3):
        assert torch.equal(batch[i], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7 + i)))
    assert torch.equal(sdlab.noise(7, (4, 8, 8), "nv"), sdlab.noise(7, (2, 4, 8, 8), "nv")[0])


def test_variation_seeds_slerp_from_the_seed_to_the_subseed():
    shape = (4, 32, 32)
    low, high = sdlab.noise(1, shape), sdlab.noise(2, shape)
    assert torch.equal(sdlab.noise(1, shape, subseed=2, subseed_strength=0.0), low)
    assert torch.equal(sdlab.noise(1, shape, subseed=2, subseed_strength=1.0), high)
    mid = sdlab.noise(1, shape, subseed=2, subseed_strength=0.5)
    # slerp, column by column (norms over dim 1 of C x H x W): a = sin((1-t) w) / sin w, b = sin(t w) / sin w
    l, h = low.double(), high.double()
    cos = ((l / l.norm(dim=1, keepdim=True)) * (h / h.norm(dim=1, keepdim=True))).sum(1)
    w = torch.acos(cos)
    a, b = (torch.sin(0.5 * w) / torch.sin(w)).unsqueeze(1), (torch.sin(0.5 * w) / torch.sin(w)).unsqueeze(1)
    assert torch.allclose(mid.double(), a * l + b * h, atol=1e-5)
    # what slerp is for: the mixture keeps unit variance, where a plain average of two noises has 1/2
    assert abs(mid.var().item() - 1) < 0.1 and abs(((low + high) / 2).var().item() - 0.5) < 0.1


def test_seed_resize_pastes_the_old_sizes_noise_into_the_centre():
    big = sdlab.noise(3, (4, 12, 16))
    old = sdlab.noise(3, (4, 8, 8))
    got = sdlab.noise(3, (4, 12, 16), seed_resize_from=(64, 64))  # pixels: latents 8 x 8
    assert torch.equal(got[:, 2:10, 4:12], old)
    outside = torch.ones(12, 16, dtype=torch.bool)
    outside[2:10, 4:12] = False
    assert torch.equal(got[:, outside], big[:, outside])
    # a smaller new size keeps the old noise's centre
    small = sdlab.noise(3, (4, 4, 4), seed_resize_from=(64, 64))
    assert torch.equal(small, old[:, 2:6, 2:6])


def test_noise_refuses_what_it_cannot_draw():
    for kwargs, name in ((dict(source="GPU!"), "source"), (dict(subseed_strength=0.5), "subseed"),
                         (dict(subseed=1, subseed_strength=2), "subseed_strength"),
                         (dict(seed_resize_from=(4, 4)), "seed_resize_from")):
        with pytest.raises(sdlab.SdlabError) as err:
            sdlab.noise(1, (4, 8, 8), **kwargs)
        assert err.value.argument == name, kwargs
    with pytest.raises(sdlab.InvalidArgument, match="shape"):
        sdlab.noise(1, (8, 8))


# --- in runs ---------------------------------------------------------------------------------------
def _image(run):
    return np.asarray(run.images[0])


def test_the_default_cpu_source_is_the_pipelines_own_draw(lab):
    """A default run hands the pipeline its generator and lets it draw (tests/test_fidelity.py checks that such a
    run is bit-identical to a plain pipe() call); that draw is sdlab.noise's CPU noise."""
    settings = sdlab.prepare_settings(lab, sdlab.Settings(prompt="x", sampler="Euler a", **SMALL))
    assert settings.rng == "cpu" and sdlab.generation.plain_noise(settings)
    kwargs, nv = sdlab.generation.run_noise(lab, settings)
    assert set(kwargs) == {"generator"} and nv is None
    assert torch.equal(sdlab.generation.initial_noise(lab, settings).cpu(), sdlab.noise(5, (1, 4, 8, 8)))


def test_a_batch_draws_image_i_from_seed_plus_i(lab):
    run = lab.generate("x", sampler="Euler", batch_size=2, **SMALL)
    alone = lab.generate("x", sampler="Euler", **dict(SMALL, seed=6))
    start = sdlab.generation.initial_noise(lab, run.settings).cpu()
    assert torch.equal(start[1], sdlab.generation.initial_noise(lab, alone.settings).cpu()[0])
    # the same noise; the pictures agree to the batched UNet's float32 sums (measured 6e-5 on the latents)
    assert torch.allclose(run.final_latents[1], alone.final_latents[0], atol=1e-3)


def test_nv_runs_start_from_nv_noise_and_draw_each_steps_noise_from_it(lab, monkeypatch):
    deterministic = lab.generate("x", sampler="Euler", rng="nv", **SMALL)
    pipe_kwargs = dict(num_inference_steps=3, width=64, height=64, guidance_scale=7.0, output_type="np")
    installed = lab.pipe.scheduler
    lab.pipe.scheduler = sdlab.make_scheduler(lab, "Euler")
    try:  # a plain pipe() call handed the same noise gives the same picture, bit for bit
        direct = lab.pipe("x", latents=sdlab.noise(5, (1, 4, 8, 8), "nv"), **pipe_kwargs).images[0]
    finally:
        lab.pipe.scheduler = installed
    assert np.array_equal(_image(deterministic), (direct * 255).round().astype(np.uint8))
    draws = []
    original = R.ImageNoise.next
    monkeypatch.setattr(R.ImageNoise, "next", lambda self: draws.append(1) or original(self))
    ancestral = lab.generate("x", sampler="Euler a", rng="nv", **SMALL)
    assert len(draws) == 3  # Euler a adds noise at each of its 3 steps, all of it NV noise
    again = lab.generate("x", sampler="Euler a", rng="nv", **SMALL)
    assert np.array_equal(_image(ancestral), _image(again))
    assert not np.array_equal(_image(ancestral), _image(lab.generate("x", sampler="Euler a", **SMALL)))


def test_ensd_changes_the_noise_samplers_add_and_nothing_else(lab):
    for source in ("cpu", "nv"):
        a = lab.generate("x", sampler="Euler a", rng=source, **SMALL)
        b = lab.generate("x", sampler="Euler a", rng=source, ensd=31337, **SMALL)
        # the starting noise is the seed's either way; ENSD re-seeds only what comes after it
        assert torch.equal(sdlab.generation.initial_noise(lab, a.settings), sdlab.generation.initial_noise(lab, b.settings))
        assert not np.array_equal(_image(a), _image(b)), source
        c = lab.generate("x", sampler="Euler", rng=source, **SMALL)
        d = lab.generate("x", sampler="Euler", rng=source, ensd=31337, **SMALL)
        assert np.array_equal(_image(c), _image(d)), source


def test_gpu_without_a_gpu_draws_nv_and_says_so(lab):
    run = lab.generate("x", rng="gpu", **SMALL)
    assert run.settings.rng == "nv" and any("NV noise" in p for p in run.problems)
    assert np.array_equal(_image(run), _image(lab.generate("x", rng="nv", **SMALL)))


def test_the_noise_settings_round_trip_through_the_infotext(lab, tmp_path):
    run = lab.generate("x", sampler="Euler a", rng="nv", ensd=31337, subseed=9, subseed_strength=0.25,
                       seed_resize_from=(32, 48), **SMALL)
    text = run.infotext()
    for field in ("RNG: NV", "ENSD: 31337", "Variation seed: 9", "Variation seed strength: 0.25",
                  "Seed resize from: 32x48"):
        assert field in text
    back = sdlab.parse_infotext(text)
    assert (back.rng, back.ensd, back.subseed, back.subseed_strength, back.seed_resize_from) == ("nv", 31337, 9, 0.25,
                                                                                               (32, 48))
    again = lab.generate(back)
    assert np.array_equal(_image(again), _image(run))
    assert not any("variation" in p.lower() or "ENSD" in p or "RNG" in p for p in again.problems)
    assert sdlab.read_settings(run.save(tmp_path / "n.png")) == run.settings
    # an A1111 infotext without RNG was drawn on A1111's default source, the GPU: here emulated as NV
    a1111 = sdlab.parse_infotext("x\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64")
    assert a1111.rng == "gpu" and lab.generate(a1111).settings.rng == "nv"


def test_variations_is_a_row_from_the_seed_to_the_subseed(lab):
    row = sdlab.variations(lab, prompt="x", subseed=9, strengths=[0.0, 0.5, 1.0], sampler="Euler", progress=False,
                           **SMALL)
    assert row.shape == (1, 3) and [r.settings.subseed_strength for r in row.runs[0]] == [0.0, 0.5, 1.0]
    assert np.array_equal(_image(row.runs[0][0]), _image(lab.generate("x", sampler="Euler", **SMALL)))
    assert np.array_equal(_image(row.runs[0][2]), _image(lab.generate("x", sampler="Euler", **dict(SMALL, seed=9))))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 64, 64), (4, 96, 96), (4, 128, 128), (2, 4, 64, 64)])
def test_nv_noise_matches_torch_randn_on_cuda(shape):
    """NV is A1111's emulation of the CUDA generator: the first draw of a seed against the GPU's own. cuRAND
    evaluates Box-Muller in single precision where the emulation uses double: agreement to float32 rounding of
    sqrt(-2 ln u) sin v (a few ulp of values up to about 5: 2e-6)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    seeds = [1, 1234, 2 ** 32 + 7]
    for seed in seeds:
        g = torch.Generator("cuda").manual_seed(seed)
        gpu = torch.randn(shape, generator=g, device="cuda").cpu()
        nv = R.NVGenerator(seed).randn(shape)
        assert torch.allclose(nv, gpu, rtol=0, atol=2e-6), (seed, float((nv - gpu).abs().max()))


def test_what_the_trial_found(lab, tmp_path):
    kw = dict(steps=4, sampler="DPM++ 2M", width=64, height=64)
    # a variation batch keeps the seed for every image and steps the variation seed (A1111's all_subseeds)
    batch = lab.generate("x", seed=1, subseed=9, subseed_strength=0.3, batch_size=2, **kw)
    alone = lab.generate("x", seed=1, subseed=10, subseed_strength=0.3, **kw)
    start = sdlab.generation.initial_noise(lab, batch.settings).cpu()
    assert torch.equal(start[1], sdlab.generation.initial_noise(lab, alone.settings).cpu()[0])
    assert torch.equal(start, sdlab.noise(1, (2, 4, 8, 8), subseed=9, subseed_strength=0.3))
    # DPM++ SDE's Brownian tree: one per image, seeded with the image's seed, so image 1 of a batch is the run of
    # seed + 1 (to the batched UNet's float32 sums)
    sde = lab.generate("x", seed=10, batch_size=2, **dict(kw, sampler="DPM++ SDE"))
    one = lab.generate("x", seed=11, **dict(kw, sampler="DPM++ SDE"))
    assert torch.allclose(sde.final_latents[1], one.final_latents[0], atol=1e-3)
    # seed_resize_from: checked by name everywhere, A1111's "WxH" understood
    with pytest.raises(sdlab.InvalidArgument, match="seed_resize_from") as err:
        sdlab.noise(1, (1, 4, 8, 8), seed_resize_from=(512, 512, 512))
    assert err.value.argument == "seed_resize_from"
    assert torch.equal(sdlab.noise(1, (4, 8, 8), seed_resize_from="32x32"), sdlab.noise(1, (4, 8, 8), seed_resize_from=(32, 32)))
    with pytest.raises(sdlab.InvalidArgument, match="at most"):
        sdlab.noise(1, (1, 4, 8192, 8192), source="nv")
    # the infotext: ENSD only where the sampler's noise uses it, the strength unrounded, each image its own seed
    assert "ENSD" not in lab.generate("x", seed=1, ensd=31337, **kw).infotext()
    assert "ENSD: 31337" in lab.generate("x", seed=1, ensd=31337, **dict(kw, sampler="Euler a")).infotext()
    exact = lab.generate("x", seed=5, subseed=9, subseed_strength=0.123456789, **kw)
    assert sdlab.parse_infotext(exact.infotext()).subseed_strength == 0.123456789
    two = lab.generate("x", seed=1, batch_size=2, **kw)
    from PIL import Image

    with Image.open(two.save(tmp_path / "b.png", index=1)) as im:
        assert "Seed: 2," in im.info["parameters"]
