"""The three-prediction guidance experiment reduces to ordinary CFG where it must."""
from __future__ import annotations

import pytest
import torch

import sdlab
from sdlab.guidance import three_way_guidance

PROMPT, NEGATIVE = "a cat", "a dog"


def _rel(a, b):
    return float((a.final_latents - b.final_latents).abs().max() / b.final_latents.abs().max())


@pytest.mark.parametrize("source", ["tiny", "tiny-sdxl"])
def test_three_way_special_cases(source):
    lab = sdlab.load(source)
    lab.pipe.set_progress_bar_config(disable=True)
    cfg = 6.0
    standard = lab.generate(PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=4, seed=1, cfg=cfg)
    no_negative = lab.generate(PROMPT, sampler="Euler", steps=4, seed=1, cfg=cfg)
    with three_way_guidance(lab, negative_scale=cfg - 1, cfg=cfg) as tw:
        same = lab.generate(PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=4, seed=1, cfg=cfg)
    assert tw.extra_calls == 4 and len(tw.norms) == 4 and same.nfe == 4  # the extra calls are not counted as NFE
    assert _rel(same, standard) < 1e-4
    with three_way_guidance(lab, negative_scale=0.0, cfg=cfg):
        empty = lab.generate(PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=4, seed=1, cfg=cfg)
    assert _rel(empty, no_negative) < 1e-4
    with three_way_guidance(lab, negative_scale=12.0, cfg=cfg):
        strong = lab.generate(PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=4, seed=1, cfg=cfg)
    assert _rel(strong, standard) > 1e-3  # a real change
    # outside the block, nothing is hooked any more
    assert torch.equal(lab.generate(PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=4, seed=1,
                                    cfg=cfg).final_latents, standard.final_latents)


def test_three_way_needs_a_scale_other_than_one(tiny):
    with pytest.raises(ValueError, match="other than 1"):
        with three_way_guidance(tiny, cfg=1.0):
            pass
