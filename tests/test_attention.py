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
