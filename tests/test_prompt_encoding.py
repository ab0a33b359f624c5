"""A1111's prompt conditioning (sdlab.prompt_encoding) on models the suite builds: chunking, emphasis modes,
Clip skip, SDXL, and prompt editing during a run, checked against the model's own encoders and pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sdlab
from sdlab import prompt_encoding as E
from sdlab.prompt_syntax import prompt_weights

SMALL = dict(steps=4, seed=7, width=64, height=64, cfg=7.0)


@pytest.fixture
def tiny():  # (loaded again if it was evicted: at most 2 models stay resident)
    lab = sdlab.load("tiny")
    lab.pipe.set_progress_bar_config(disable=True)
    return lab


@pytest.fixture
def xl():  # (loaded again if it was evicted: at most 2 models stay resident)
    lab = sdlab.load("tiny-sdxl")
    lab.pipe.set_progress_bar_config(disable=True)
    return lab


@pytest.fixture
def toy():  # (loaded again if it was evicted: at most 2 models stay resident)
    lab = sdlab.load("toy")
    lab.pipe.set_progress_bar_config(disable=True)
    return lab


@pytest.fixture(scope="module")
def shifted():
    """The tiny model's text encoder with its final norm's bias moved off 0. The random model's embeddings have
    a mean of about 1e-8 (a fresh LayerNorm centres each token), so restoring "the mean" would divide by noise;
    a trained CLIP's mean is far from 0 (its norm's learned bias), as here."""
    from types import SimpleNamespace

    pipe = sdlab.tiny.build_tiny_pipeline()
    with torch.no_grad():
        pipe.text_encoder.final_layer_norm.bias += 0.25
    return SimpleNamespace(pipe=pipe, family="sd1", device=torch.device("cpu"))


def _words(n: int, word: str = "a") -> str:
    return " ".join([word] * n)


# --- chunks ----------------------------------------------------------------------------------------
def test_chunks_hold_75_tokens_framed_by_start_and_end(tiny):
    tok = tiny.pipe.tokenizer
    one = E.chunks(tok, prompt_weights(_words(75)))  # the tiny tokenizer reads "a" as one token
    assert [c.length for c in one] == [75]
    two = E.chunks(tok, prompt_weights(_words(76)))
    assert [c.length for c in two] == [75, 1]
    for c in two:
        assert len(c.ids) == len(c.weights) == 77
        assert c.ids[0] == tok.bos_token_id and c.ids[c.length + 1] == tok.eos_token_id
        assert set(c.ids[c.length + 2:]) <= {tok.pad_token_id}
    # the empty prompt is one chunk of start, end and padding: what the pipeline encodes for ""
    empty = E.chunks(tok, prompt_weights(""))
    assert len(empty) == 1 and list(empty[0].ids) == tok("", padding="max_length", max_length=77).input_ids


def test_padding_uses_the_tokenizers_pad_token_after_the_end_token(tiny):
    """OpenCLIP's tokenizers (SD 2.x, SDXL's second) pad with id 0, not the end token: A1111's id_pad."""
    tok = sdlab.tiny.tiny_tokenizer()
    tok.pad_token = "!"
    (c,) = E.chunks(tok, [("a a", 1.0)])
    assert c.ids[:4] == (tok.bos_token_id, c.ids[1], c.ids[2], tok.eos_token_id)
    assert set(c.ids[4:]) == {tok.convert_tokens_to_ids("!")} != {tok.eos_token_id}


def test_a_phrase_cut_by_the_chunk_end_moves_back_to_the_last_comma(tiny):
    tok = tiny.pipe.tokenizer
    # 70 tokens, a comma, then 10 more: full at 75 with the comma 5 tokens back, so the 4 tokens after it move
    near = E.chunks(tok, prompt_weights(_words(70) + ", " + _words(10, "b")))
    assert [c.length for c in near] == [71, 10]
    assert near[0].ids[71] == tok.convert_tokens_to_ids(",</w>")  # the comma ends the first chunk
    # a comma 25 tokens back is beyond the 20 A1111 looks back: the chunk is cut where it is full
    far = E.chunks(tok, prompt_weights(_words(50) + ", " + _words(30, "b")))
    assert [c.length for c in far] == [75, 6]
    assert [c.length for c in E.chunks(tok, prompt_weights(_words(70) + ", " + _words(10, "b")), backtrack=0)] == [75, 6]


def test_break_starts_a_new_chunk_and_weights_follow_their_tokens(tiny):
    tok = tiny.pipe.tokenizer
    got = E.chunks(tok, prompt_weights("a (b:1.5) BREAK [c]"))
    assert [c.length for c in got] == [2, 1]
    assert got[0].weights[:4] == (1.0, 1.0, 1.5, 1.0)
    assert got[1].weights[1] == pytest.approx(1 / 1.1)
    assert E.token_count(tok, "a (b:1.5) BREAK [c]") == (3, 2)


# --- encoding --------------------------------------------------------------------------------------
def _pipeline_embeds(lab, text):
    with torch.inference_mode():
        cond, _ = lab.pipe.encode_prompt(text, lab.device, 1, False)
    return cond


def test_weights_of_1_give_the_pipelines_own_embedding_bit_for_bit(tiny):
    for text in ("a red circle", "(a red circle:1)"):
        (got,) = E.encode_texts(tiny, [text])
        assert torch.equal(got.embeds, _pipeline_embeds(tiny, "a red circle")), text


def test_original_emphasis_scales_tokens_then_restores_the_mean(shifted):
    tiny = shifted
    (plain,) = E.encode_texts(tiny, ["a b c"])
    (raw,) = E.encode_texts(tiny, ["a (b:1.5) c"], emphasis="no_norm")
    (orig,) = E.encode_texts(tiny, ["a (b:1.5) c"], emphasis="original")
    z = plain.embeds[0]
    # no_norm: token 2 (b) times 1.5, everything else as it was
    assert torch.equal(raw.embeds[0, 2], z[2] * 1.5) and torch.equal(raw.embeds[0, 1], z[1])
    # original: the same direction, rescaled so that the mean is the unweighted mean (float32 sums: 1e-6)
    assert orig.embeds.mean().item() == pytest.approx(z.mean().item(), rel=1e-5)
    assert torch.allclose(orig.embeds[0], raw.embeds[0] * (z.mean() / raw.embeds[0].mean()), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(orig.embeds, raw.embeds)
    # ignore: the weights are parsed (the brackets go) and dropped; none: the brackets are text
    (ignored,) = E.encode_texts(tiny, ["a (b:1.5) c"], emphasis="ignore")
    assert torch.equal(ignored.embeds, plain.embeds)
    (literal,) = E.encode_texts(tiny, ["a (b:1.5) c"], emphasis="none")
    assert torch.equal(literal.embeds, _pipeline_embeds(tiny, "a (b:1.5) c"))


def test_comfyui_emphasis_moves_weighted_tokens_away_from_the_empty_prompt(shifted):
    tiny = shifted
    (plain,) = E.encode_texts(tiny, ["a b c"])
    (got,) = E.encode_texts(tiny, ["a (b:1.5) c"], emphasis="comfyui")
    empty = _pipeline_embeds(tiny, "")[0]
    assert torch.allclose(got.embeds[0, 2], empty[2] + (plain.embeds[0, 2] - empty[2]) * 1.5, atol=1e-6)
    assert torch.equal(got.embeds[0, 1], plain.embeds[0, 1])


def test_original_normalisation_runs_over_the_schedules_batch(shifted):
    tiny = shifted
    """A1111 encodes all texts of one prompt's schedule in one batch and restores the batch's mean."""
    a, b = E.encode_texts(tiny, ["(x:1.5) y", "x y"])
    alone_a, = E.encode_texts(tiny, ["(x:1.5) y"])
    plain_b = E.encode_texts(tiny, ["x y"])[0].embeds
    assert torch.cat([a.embeds, b.embeds]).mean().item() == pytest.approx(plain_b.mean().item(), rel=1e-5)
    assert not torch.allclose(a.embeds, alone_a.embeds)  # the mean was restored over both, not over a alone
    # so the unweighted text of the batch is rescaled too, by the batch's one factor
    ratio = b.embeds.mean() / plain_b.mean()
    assert ratio.item() != pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(b.embeds, plain_b * ratio, rtol=1e-5, atol=1e-6)


def test_long_prompts_are_chunks_concatenated_along_the_sequence(tiny):
    text = _words(80)
    (got,) = E.encode_texts(tiny, [text])
    assert got.chunks == 2 and got.embeds.shape == (1, 154, 32)
    first = E.chunks(tiny.pipe.tokenizer, prompt_weights(text))[0]
    assert torch.equal(got.embeds[:, :77], _pipeline_embeds(tiny, _words(75)))
    assert first.length == 75


def test_clip_skip_is_an_earlier_layer_with_the_final_norm(tiny):
    (skip,) = E.encode_texts(tiny, ["a red circle"], clip_skip=2)
    ids = torch.tensor([tiny.pipe.tokenizer("a red circle", padding="max_length", max_length=77).input_ids])
    with torch.inference_mode():
        out = tiny.pipe.text_encoder(ids, output_hidden_states=True)
        expected = tiny.pipe.text_encoder.final_layer_norm(out.hidden_states[-2])
    assert torch.equal(skip.embeds, expected)
    assert not torch.allclose(skip.embeds, _pipeline_embeds(tiny, "a red circle"))
    with pytest.raises(sdlab.InvalidArgument, match="clip_skip") as err:
        tiny.generate("x", clip_skip=3, **SMALL)  # the tiny text encoder has 2 layers
    assert err.value.argument == "clip_skip"


def test_sdxl_both_encoders_penultimate_and_the_pooled_from_the_first_chunk(xl):
    text = _words(80)
    (got,) = E.encode_texts(xl, [text])
    assert got.embeds.shape == (1, 154, 64) and got.pooled.shape == (1, 32)
    # the first chunk and the pooled embedding are the pipeline's own for the first 75 tokens
    with torch.inference_mode():
        cond, _, pooled, _ = xl.pipe.encode_prompt(_words(75), device=xl.device, num_images_per_prompt=1,
                                                   do_classifier_free_guidance=False)
    assert torch.equal(got.embeds[:, :77], cond) and torch.equal(got.pooled, pooled)


# --- generation -------------------------------------------------------------------------------------
def _image(run):
    return np.asarray(run.images[0])


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_a_prompt_edit_at_the_end_runs_exactly_as_its_first_text(model):
    lab = sdlab.load(model)
    lab.pipe.set_progress_bar_config(disable=True)
    kw = dict(SMALL, sampler="Euler", negative_prompt="blurry")
    plain = lab.generate("a red circle", **kw)
    edited = lab.generate("[a red circle:a blue square:1.0]", **kw)
    assert plain.prompt_plan is None and edited.prompt_plan is not None  # the second went through sdlab's encoder
    assert np.array_equal(_image(plain), _image(edited))
    assert torch.equal(plain.final_latents, edited.final_latents)


def _conditioning_per_call(lab, **kwargs):
    """The encoder_hidden_states the UNet received at each call."""
    seen = []
    handle = lab.pipe.unet.register_forward_pre_hook(
        lambda m, args, kw: seen.append(kw["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        run = lab.generate(**kwargs)
    finally:
        handle.remove()
    return run, seen


def test_the_embedding_switches_exactly_at_the_scheduled_call(tiny):
    # 6 steps, [a:b:0.5]: A1111's schedule [(3, a), (6, b)], and call k uses the first entry ending at >= k
    run, seen = _conditioning_per_call(tiny, prompt="[a red circle:a blue square:0.5]", negative_prompt="dark",
                                       **dict(SMALL, steps=6, sampler="Euler"))
    assert [r.prompt for r in run.records] == ["a red circle"] * 4 + ["a blue square"] * 2
    assert {r.negative_prompt for r in run.records} == {"dark"}
    red, blue, dark = (E.encode_texts(tiny, [t])[0].embeds for t in ("a red circle", "a blue square", "dark"))
    for k, ehs in enumerate(seen):
        assert ehs.shape == (2, 77, 32)
        assert torch.equal(ehs[0], dark[0])  # negative first, as the pipeline concatenates them
        assert torch.equal(ehs[1], (red if k <= 3 else blue)[0]), k


def test_alternation_and_negative_prompt_editing_with_a_batch(tiny):
    run, seen = _conditioning_per_call(tiny, prompt="a [cat|dog]", negative_prompt="[ugly::2]", batch_size=2,
                                       **dict(SMALL, steps=4, sampler="Euler"))
    assert [r.prompt for r in run.records] == ["a cat", "a cat", "a dog", "a cat"]  # A1111: calls 0 and 1 both step 1
    assert [r.negative_prompt for r in run.records] == ["ugly", "ugly", "ugly", ""]
    assert all(ehs.shape == (4, 77, 32) for ehs in seen)
    cat, dog = (E.encode_texts(tiny, [t])[0].embeds[0] for t in ("a cat", "a dog"))
    assert torch.equal(seen[2][2], dog) and torch.equal(seen[2][3], dog) and torch.equal(seen[3][2], cat)


def test_second_order_samplers_schedule_over_twice_the_steps(tiny):
    """A1111 counts the prompt schedule in model calls for second-order samplers (SamplerData.total_steps)."""
    run = tiny.generate("[a:b:0.5]", **dict(SMALL, steps=3, sampler="Heun"))
    assert run.prompt_plan.total_steps == 6 and run.nfe == 5
    assert [r.prompt for r in run.records] == ["a", "a", "a", "a", "b"]


def test_long_prompts_are_no_longer_cut_and_plain_keeps_the_pipelines_reading(tiny):
    long = ", ".join(["word"] * 30)
    run = tiny.generate(long, **SMALL)
    assert run.prompt_chunks == 2 and not any("dropped" in p for p in run.problems)
    plain = tiny.generate(long, prompt_syntax="plain", **SMALL)
    assert plain.prompt_plan is None and any("dropped" in p for p in plain.problems)
    assert plain.records[0].prompt == long


def test_settings_are_checked_where_they_enter(tiny):
    for kwargs, name in ((dict(prompt_syntax="A1111!"), "prompt_syntax"), (dict(emphasis="loud"), "emphasis"),
                         (dict(clip_skip=0), "clip_skip"), (dict(clip_skip="2"), "clip_skip")):
        with pytest.raises(sdlab.SdlabError) as err:
            tiny.generate("x", **kwargs, **SMALL)
        assert err.value.argument == name, kwargs
    # A1111's own names for its emphasis modes are understood
    assert sdlab.prepare_settings(tiny, sdlab.Settings(emphasis="No norm", **SMALL)).emphasis == "no_norm"


def test_extra_network_tags_and_and_are_said(tiny):
    run = tiny.generate("a cat <lora:film:0.8> AND a dog", **SMALL)
    said = " ".join(run.problems)
    assert "<lora:film:0.8>" in said and "AND" in said
    assert all("<lora" not in r.prompt for r in run.records)


def test_infotext_carries_clip_skip_emphasis_and_padding(tiny):
    run = tiny.generate(_words(80), negative_prompt="x", clip_skip=2, emphasis="no_norm", **SMALL)
    text = run.infotext()
    assert "Clip skip: 2" in text and "Emphasis: No norm" in text and "Pad conds: True" in text
    back = sdlab.parse_infotext(text)
    assert (back.clip_skip, back.emphasis) == (2, "no_norm")  # A1111's name read as sdlab's
    again = tiny.generate(back)
    assert again.settings.emphasis == "no_norm" and np.array_equal(_image(again), _image(run))
    # regenerating an A1111 infotext no longer lists emphasis or Clip skip among the differences
    assert not any("Clip skip" in p or "syntax" in p for p in again.problems)


def test_an_unpadded_a1111_infotext_is_said_to_differ(tiny):
    text = f"{_words(80)}\nNegative prompt: x\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, RNG: CPU"
    run = tiny.generate(sdlab.parse_infotext(text))
    assert any("unpadded" in p for p in run.problems)
    assert not any("unpadded" in p for p in tiny.generate(sdlab.parse_infotext(text + ", Pad conds: True")).problems)


# --- the teaching model --------------------------------------------------------------------------
def test_the_toy_reads_emphasis_as_a_scaled_log_prior(toy):
    unet, pipe = toy.pipe.unet, toy.pipe
    f = sdlab.toy.data.factors(8, 8)
    plain, = E.encode_texts(toy, ["a red circle"], emphasis="no_norm")
    strong, = E.encode_texts(toy, ["a (red:1.5) circle"], emphasis="no_norm")
    lp_plain, lp_strong = (unet.log_prior(c.embeds, f)[0] for c in (plain, strong))
    red = np.array([a["colour"] == "red" for a in sdlab.toy.dataset(64, 64).attributes])
    w = unet.config.prompt_weight
    # the red pictures gain half a prompt weight more log-prior; the circle's share is unchanged
    assert torch.allclose((lp_strong - lp_plain)[red], torch.full((int(red.sum()),), 0.5 * w, dtype=torch.float64))
    assert torch.allclose((lp_strong - lp_plain)[~red], torch.zeros(int((~red).sum()), dtype=torch.float64))
    assert pipe is toy.pipe


def test_the_toy_changes_colour_when_the_prompt_is_edited_early_enough(toy):
    ds = sdlab.toy.dataset(128, 128)
    kw = dict(steps=20, seed=3, cfg=7.0, width=128, height=128, sampler="Euler")
    colours = {}
    for when in ("0.1", "0.9"):
        run = toy.generate(f"a [red:blue:{when}] circle", **kw)
        colours[when] = ds.attributes[ds.nearest(run.final_latents)[0]]["colour"]
    assert colours == {"0.1": "blue", "0.9": "red"}


def test_clip_skip_where_a1111_ignores_it_is_said_and_changes_nothing(xl, toy):
    for lab, kw in ((xl, dict(SMALL, sampler="Euler")), (toy, dict(SMALL, width=64, height=64))):
        plain = lab.generate("a red circle", **kw)
        skipped = lab.generate("a red circle", clip_skip=2, **kw)
        assert any("clip_skip=2 changes nothing" in p for p in skipped.problems), lab.source
        assert np.array_equal(_image(plain), _image(skipped)), lab.source


def test_an_alternation_of_equal_texts_runs_as_that_text(tiny):
    kw = dict(SMALL, sampler="Euler")
    assert np.array_equal(_image(tiny.generate("a [cat|cat] sat", **kw)), _image(tiny.generate("a cat sat", **kw)))


def test_sd2_pads_with_its_own_token_and_keeps_its_layer_under_clip_skip():
    """SD 2.x's OpenCLIP tokenizer pads with id 0 ("!"), not the end token, and A1111 ignores Clip skip there:
    the tiny SD 1.x pipeline with that tokenizer stands in for one (the encoder code does not look further)."""
    from types import SimpleNamespace

    pipe = sdlab.tiny.build_tiny_pipeline()
    pipe.tokenizer.pad_token = "!"
    sd2 = SimpleNamespace(pipe=pipe, family="sd2", device=torch.device("cpu"))
    (got,) = E.encode_texts(sd2, ["a red circle"], clip_skip=2)
    assert torch.equal(got.embeds, _pipeline_embeds(sd2, "a red circle"))  # the last layer, padded with "!"
    plan = E.plan_prompts(sd2, "a red circle", "", steps=4, clip_skip=2)
    assert plan is not None and any("SD 2.x" in note for note in plan.notes)


def test_what_the_trial_found(tiny, toy):
    # a lone surrogate (text decoded with surrogateescape) is refused where it enters, naming the prompt
    with pytest.raises(sdlab.InvalidArgument, match="U\\+D800") as err:
        tiny.generate("a \ud800 (red:1.2) circle", **SMALL)
    assert err.value.argument == "prompt"
    # A1111's and sdlab's spellings of the emphasis modes, in any case; an infotext's unknown one names the field
    assert sdlab.prepare_settings(tiny, sdlab.Settings(emphasis="NO NORM", **SMALL)).emphasis == "no_norm"
    with pytest.raises(sdlab.InvalidArgument, match="'Emphasis: loud'"):
        sdlab.parse_infotext("x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Emphasis: loud")
    # negative prompt editing shows in the records' changes; without guidance the negative conditions nothing
    run = tiny.generate("a circle", negative_prompt="[square:star:2]", **dict(SMALL, steps=6, sampler="Euler"))
    assert run.prompt_changes(negative=True) == [(0, "square"), (3, "star")] and len(run.prompt_changes()) == 1
    assert all(r.negative_prompt is None for r in tiny.generate("[a:b:2]", **dict(SMALL, cfg=1.0)).records)


def test_the_denoiser_reads_a1111_prompts_as_a_run_does(tiny):
    calls = []
    handle = tiny.pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        D = sdlab.Denoiser(tiny, "[red|blue] circle <lora:film:0.8>", steps=10_000, step=3)
    finally:
        handle.remove()
    assert len(calls) == 3  # the schedule's 10,000 entries hold two texts (and the negative one): each encoded once
    # at step 3 (call 2: A1111's counter gives calls 0 and 1 to the first text) the alternation says blue, and
    # the tag is taken out of the text as generate takes it out
    blue = E.encode_texts(tiny, ["blue circle "])[0].embeds
    assert torch.equal(D.context[1:], blue)
