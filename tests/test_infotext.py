"""PNG metadata round trips and A1111 infotext parsing."""
from __future__ import annotations

import json

import pytest
from PIL import Image

import sdlab
from sdlab.infotext import parse_infotext


def test_png_round_trip_regenerates_the_same_image(lab, tmp_path):
    run = lab.generate("a red, round apple", negative_prompt="text, watermark", sampler="DPM++ 2M", schedule="karras",
                       steps=4, seed=1234, cfg=6.5, width=64, height=48)
    path = run.save(tmp_path / "apple.png")
    with Image.open(path) as img:
        text = img.text
    assert "parameters" in text and "sdlab" in text
    data = json.loads(text["sdlab"])
    assert data["family"] == "sd1" and data["model"] == "tiny" and data["scheduler"]["schedule"] == "karras"
    assert "A1111's Karras" in data["scheduler"]["changes"]["noise levels"][1]
    assert {"sdlab", "diffusers", "transformers", "torch"} <= set(data["versions"])
    settings = sdlab.read_settings(path)
    assert settings == run.settings
    again = lab.generate(settings)
    assert again.image.tobytes() == run.image.tobytes()
    # the A1111 text alone regenerates it too (as A1111 or another tool would read it)
    from_text = sdlab.read_settings(text["parameters"])
    assert lab.generate(from_text).image.tobytes() == run.image.tobytes()


def test_infotext_looks_like_a1111s(lab):
    run = lab.generate("a cat", negative_prompt="dog", sampler="DPM++ 2M", steps=3, seed=7, cfg=7.0)
    lines = run.infotext().split("\n")
    assert lines[0] == "a cat" and lines[1] == "Negative prompt: dog"
    assert lines[2].startswith("Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 7, "
                               "Size: 64x64, Model: tiny")


def test_save_refuses_other_formats(lab, tmp_path):
    run = lab.generate("x", steps=1, seed=1)
    with pytest.raises(ValueError, match=r"\.png"):
        run.save(tmp_path / "x.jpg")


A1111_NEW = """masterpiece, a castle on a hill
at sunset
Negative prompt: lowres, bad anatomy
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54, film: 1a2b", Version: v1.10.1"""

A1111_LEGACY = """portrait of a woman
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Denoising strength: 0.7"""


def test_a1111_infotext_with_schedule_type_quotes_and_extra_fields():
    s = parse_infotext(A1111_NEW)
    assert s.prompt == "masterpiece, a castle on a hill\nat sunset"
    assert s.negative_prompt == "lowres, bad anatomy"
    assert (s.steps, s.sampler, s.schedule, s.cfg, s.seed, s.width, s.height) == \
        (30, "DPM++ 2M", "karras", 6.5, 1234, 512, 768)
    assert s.extra == {"Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
                       "Lora hashes": "add_detail: 7c6bad76eb54, film: 1a2b", "Version": "v1.10.1"}


def test_legacy_a1111_sampler_names_are_split():
    s = parse_infotext(A1111_LEGACY)
    assert (s.sampler, s.schedule, s.seed, s.negative_prompt) == ("DPM++ 2M", "karras", 42, "")
    assert s.extra["Denoising strength"] == "0.7"


def test_unknown_sampler_is_kept_and_reported():
    s = parse_infotext("x\nSteps: 20, Sampler: DPM adaptive, CFG scale: 7, Seed: 1, Size: 512x512")
    assert s.sampler == "DPM adaptive" and s.extra["Sampler"] == "DPM adaptive"


def test_a1111_png_is_read(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", A1111_LEGACY)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert sdlab.read_settings(path).sampler == "DPM++ 2M"
    assert sdlab.read_settings(Image.open(path)).seed == 42
    with pytest.raises(ValueError, match="No generation settings"):
        blank = tmp_path / "blank.png"
        Image.new("RGB", (8, 8)).save(blank)
        sdlab.read_settings(blank)


def test_a_custom_scheduler_run_saves_settings_that_reproduce_it(lab, tmp_path):
    from diffusers import DDIMScheduler

    trap = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=True,
                         set_alpha_to_one=True)
    run = lab.generate("a cat", steps=4, seed=5, scheduler=trap)
    s = run.settings
    # the catalog entry of its class; its leading spacing without steps_offset is no A1111 or ComfyUI schedule
    assert s.sampler == "DDIM" and s.schedule == "custom"
    assert s.scheduler_config["_class_name"] == "DDIMScheduler" and s.scheduler_config["clip_sample"] is True
    assert run.scheduler_report["schedule"] == "custom" and run.scheduler_report["via"] == "custom"
    assert "Custom scheduler: DDIMScheduler" in run.infotext() and "Schedule type" not in run.infotext()
    read = sdlab.read_settings(run.save(tmp_path / "trap.png"))
    assert read == s
    again = lab.generate(read)
    assert again.image.tobytes() == run.image.tobytes()
    with pytest.raises(ValueError, match="schedule='custom' is what sdlab records"):
        lab.generate(read.updated(scheduler_config=None))
    sdlabs = lab.generate(read.updated(scheduler_config=None, schedule="automatic"))  # sdlab's DDIM
    assert sdlabs.image.tobytes() != run.image.tobytes()


# --- regenerating an A1111 picture: what will differ is said, never silent ---------------------------------
def test_unknown_schedule_type_fails_loudly_instead_of_running_another(lab):
    s = parse_infotext("x\nSteps: 4, Sampler: Euler, Schedule type: Turbo Wobble, CFG scale: 7, Seed: 1, Size: 64x64")
    assert s.schedule == "Turbo Wobble" and s.extra["Schedule type"] == "Turbo Wobble"
    with pytest.raises(ValueError, match="Unknown schedule 'Turbo Wobble'"):
        lab.generate(s)
    known = parse_infotext("x\nSteps: 4, Sampler: Euler, Schedule type: Align Your Steps, CFG scale: 7, Seed: 1, Size: 64x64")
    assert known.schedule == "align_your_steps" and "Schedule type" not in known.extra


def test_schedule_parameters_are_read_back():
    s = parse_infotext("x\nSteps: 4, Sampler: Euler, Schedule type: Karras, Schedule rho: 5, CFG scale: 7, Seed: 1, "
                       "Size: 64x64, Schedule max sigma: 10")
    assert s.schedule_params == {"rho": 5.0} and s.extra == {"Schedule max sigma": "10"}
    beta = parse_infotext("x\nSteps: 4, Sampler: Euler, Schedule type: Beta, Beta schedule alpha: 0.5, "
                          "Beta schedule beta: 0.7, CFG scale: 7, Seed: 1, Size: 64x64")
    assert beta.schedule_params == {"alpha": 0.5, "beta": 0.7}


A1111_FULL = """(masterpiece:1.2), a castle on a hill, <lora:add_detail:0.8>
Negative prompt: [lowres]
Steps: 4, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x64, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, ENSD: 31337, Denoising strength: 0.5, Hires upscale: 2, Face restoration: CodeFormer, Version: v1.10.1"""


def test_regenerating_an_a1111_infotext_reports_every_difference(lab):
    settings = parse_infotext(A1111_FULL)
    assert settings.origin == "A1111 infotext"
    with pytest.warns(sdlab.SdlabNotice) as caught:
        run = lab.generate(settings)
    said = "\n".join(run.problems)
    assert "A1111's DPM++ 2M SDE is not reproduced exactly" in said  # sampler numerics
    # the noise: A1111's default GPU source (no RNG field), here without a GPU drawn as NV, and said so
    assert run.settings.rng == "nv" and "A1111's NV noise" in said and "RNG" not in said.split("NV noise")[-1]
    assert run.settings.ensd == 31337 and "ENSD" not in said  # ENSD is applied as A1111 applies it
    # Clip skip and the prompt syntax are read as A1111 reads them, so they are no longer differences; the LoRA
    # tag is (sdlab takes it out of the text but loads no LoRA)
    assert run.settings.clip_skip == 2 and "Clip skip" not in said and run.prompt_plan is not None
    assert "(masterpiece:1.2)" not in said and "[lowres]" not in said and "<lora:add_detail:0.8>" in said
    assert "second pass" in said and "Hires upscale: 2" in said
    assert "v1-5-pruned-emaonly" in said and "'tiny'" in said
    assert "Face restoration: CodeFormer" in said and "Version" not in said.split("Not used by sdlab")[-1]
    assert all(any(p in str(w.message) for w in caught) for p in run.problems)  # each one also as a notice
    assert run.image is not None                                                 # and the picture is made


def test_a1111_cpu_rng_and_matching_sampler_leave_little_to_report(lab):
    text = "a castle\nSteps: 4, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 9, Size: 64x64, RNG: CPU"
    run = lab.generate(parse_infotext(text))
    assert run.problems == []


def test_settings_typed_or_from_sdlab_files_report_no_a1111_differences(lab, tmp_path):
    run = lab.generate("a castle", sampler="DPM++ 2M SDE", steps=3, seed=1, width=64, height=64)
    assert run.problems == []
    again = sdlab.read_settings(run.save(tmp_path / "c.png"))
    assert again.origin == "sdlab" and again == run.settings and lab.generate(again).problems == []
