"""Cross-attention maps (sdlab.attention): recorded beside the UNet without changing its result."""
from __future__ import annotations

import numpy as np
import pytest

import sdlab
from sdlab.sampler_catalog import CATALOG

SMALL = dict(steps=3, seed=1, width=64, height=64)


@pytest.mark.parametrize("sampler", list(CATALOG))
def test_recording_attention_leaves_the_image_bit_identical(lab, sampler):
    plain = lab.generate("a red circle", sampler=sampler, **SMALL)
    recorded = lab.generate("a red circle", sampler=sampler, attention=True, **SMALL)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(recorded.images[0]))
    assert len(recorded.attention.calls) == recorded.nfe


def test_maps_one_per_prompt_token_non_negative_normalised(lab):
    run = lab.generate("a red circle", attention=True, batch_size=2, **SMALL)
    maps = run.attention
    tokens = lab.pipe.tokenizer("a red circle", add_special_tokens=False).input_ids
    assert len(maps.tokens) == len(maps.positions) == len(tokens)  # no start, end or padding
    assert maps.positions == list(range(1, len(tokens) + 1))
    for call in maps.calls:
        assert call.shape == (2, len(tokens), 8, 8) and call.dtype.is_floating_point
        assert float(call.min()) >= 0 and float(call.max()) <= 1  # mean attention probabilities
    m = maps.map("c", step=2)
    assert m.shape == (8, 8) and m.min() >= 0 and m.max() == pytest.approx(1.0)
    assert maps.map(0).shape == (8, 8) and maps.map("c", step=range(1, 3)).shape == (8, 8)
    with pytest.raises(sdlab.InvalidArgument, match="not a token"):
        maps.map("dog")


def test_sdxl_and_long_prompts_map_every_token():
    xl = sdlab.load("tiny-sdxl")
    xl.pipe.set_progress_bar_config(disable=True)
    run = xl.generate("a red circle", sampler="Euler", attention=True, **SMALL)
    assert run.attention.calls[0].shape[1] == len(run.attention.tokens) == 10
    lab = sdlab.load("tiny")
    lab.pipe.set_progress_bar_config(disable=True)
    long = " ".join(["a"] * 80)
    run = lab.generate(long, attention=True, **SMALL)
    assert run.prompt_chunks == 2 and len(run.attention.tokens) == 80


def test_the_teaching_model_has_no_attention_to_record(toy):
    with pytest.raises(sdlab.NotSupported, match="no cross-attention"):
        toy.generate("a red circle", attention=True, steps=2, width=64, height=64)


# --- word influence ------------------------------------------------------------------------------
@pytest.fixture
def toy_run(toy):
    import torch

    return toy.generate("a red circle at the top left zebra", sampler="Euler", steps=12, seed=1, width=128,
                        height=128, record_dtype=torch.float32)


def test_a_word_the_model_ignores_has_no_influence(toy, toy_run):
    got = toy.word_influence(toy_run, ["zebra"], steps=[1, 5, 9])  # in the prompt, outside the toy's vocabulary
    assert all(float(got.map("zebra", k).sum()) == 0.0 for k in got.steps)
    with pytest.raises(sdlab.InvalidArgument, match="not in the prompt") as err:  # a word the prompt does not have
        toy.word_influence(toy_run, ["blue"], steps=[1])
    assert err.value.argument == "words"


def test_a_colour_words_influence_lies_on_the_pictures_shape(toy, toy_run):
    """For "a red circle at the top left", at least half of red's influence map lies in the shape's region of
    the picture the run draws (the dataset knows where its shapes are)."""
    ds = sdlab.toy.dataset(128, 128)
    a = ds.attributes[ds.nearest(toy_run.final_latents[0])[0]]
    assert (a["colour"], a["shape"], a["column"], a["row"]) == ("red", "circle", "left", "top")
    inside = sdlab.toy.data.shape_mask(a["shape"], a["column"], a["row"], a["size"], 16, 16) > 0
    got = toy.word_influence(toy_run, ["red", "circle"], steps=[3, 5, 7, 12])
    for k in (3, 5, 7):
        m = got.map("red", k)
        assert m.min() >= 0 and m[inside].sum() >= 0.5 * m.sum(), k
    # words stop mattering once the picture is decided
    totals = got.total("red")
    assert totals[12] < 0.01 * totals[3]


def test_influence_needs_the_runs_samples_and_names_what_is_wrong(toy):
    run = toy.generate("a red circle", steps=4, seed=1, width=64, height=64, record=False)
    with pytest.raises(sdlab.InvalidArgument, match="record=True"):
        toy.word_influence(run, ["red"], steps=[2])
    run = toy.generate("a red circle", steps=4, seed=1, width=64, height=64)
    with pytest.raises(sdlab.SdlabError) as err:
        toy.word_influence(run, ["red"], steps=[9])
    assert err.value.argument == "steps"


def test_the_viewer_lays_a_words_map_over_the_step(lab):
    run = lab.generate("a red circle", attention=True, **SMALL)
    viewer = sdlab.StepViewer(run)
    assert viewer.word.layout.display == "" and len(viewer.word.options) == 1 + len(run.attention.tokens)
    viewer.slider.value = 2
    plain = viewer.panel.image.value
    viewer.word.value = 4
    assert viewer.panel.image.value != plain and "attention at this call:" in viewer.info.value
    assert sdlab.StepViewer(lab.generate("a red circle", **SMALL)).word.layout.display == "none"


def test_weighted_words_carry_their_a1111_weight(lab):
    run = lab.generate("a (b:1.5) c", attention=True, **SMALL)
    assert run.attention.tokens == ["a", "b", "c"] and run.attention.labels() == ["a", "(b:1.5)", "c"]


def test_what_the_word_maps_trial_found(lab, toy, toy_run):
    # an empty prompt (the Studio's default) records no tokens and the run completes
    empty = lab.generate("", attention=True, **SMALL)
    assert empty.attention.tokens == [] and empty.attention.calls[0].shape[1] == 0 and empty.image is not None
    # prompt editing changes the tokens during the run: refused, saying why
    with pytest.raises(sdlab.NotSupported, match="prompt editing") as err:
        lab.generate("[a:b:0.5]", attention=True, **SMALL)
    assert err.value.argument == "attention"
    # map() checks image and step by name
    run = lab.generate("a b", attention=True, batch_size=2, **SMALL)
    for kwargs, name in ((dict(image=5), "image"), (dict(image="x"), "image"), (dict(step=True), "step")):
        with pytest.raises(sdlab.SdlabError) as err:
            run.attention.map("a", **kwargs)
        assert err.value.argument == name, kwargs
    # without CFG, and with two calls a step, the image stays the same too
    for extra in (dict(cfg=1.0), dict(sampler="Heun")):
        a = lab.generate("a b", **SMALL, **extra)
        b = lab.generate("a b", attention=True, **SMALL, **extra)
        assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0])), extra
    # influence: a run of another model, a grid with another run, SDXL: refused with the argument named
    with pytest.raises(sdlab.InvalidArgument) as err:
        lab.word_influence(toy_run, ["red"], steps=[1])
    assert err.value.argument == "run"
    from sdlab import plots

    inf = toy.word_influence(toy_run, ["red"], steps=[2])
    with pytest.raises(sdlab.InvalidArgument) as err:
        plots.influence_grid(inf, toy.generate("a blue star", steps=3, seed=1, width=64, height=64))
    assert err.value.argument == "run"
    xl = sdlab.load("tiny-sdxl")
    xl.pipe.set_progress_bar_config(disable=True)
    with pytest.raises(sdlab.NotSupported) as err:
        xl.word_influence(xl.generate("a b", sampler="Euler", **SMALL), ["a"], steps=[1])
    assert err.value.argument == "run"
