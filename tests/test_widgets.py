"""The Studio headless: set widget values, click, and check the settings and what the core did."""
from __future__ import annotations

import pytest

import sdlab
from sdlab import generation


@pytest.fixture
def studio(lab, tmp_path):
    return sdlab.Studio(lab, output_dir=tmp_path)


def test_controls_write_the_settings(studio):
    studio.prompt.value = "a lighthouse"
    studio.negative.value = "fog"
    studio.cfg.value = 4.5
    studio.steps.value = 7
    studio.picker.sampler.value = "Euler"
    studio.picker.schedule.value = "karras"
    studio.seed_mode.value = "fixed"
    studio.seed.value = 99
    studio.width.value, studio.height.value = 48, 80
    s = studio.settings
    assert (s.prompt, s.negative_prompt, s.cfg, s.steps, s.sampler, s.schedule, s.seed, s.width, s.height) == \
        ("a lighthouse", "fog", 4.5, 7, "Euler", "karras", 99, 48, 80)
    studio.seed_mode.value = "random"
    assert studio.settings.seed is None


def test_schedule_dropdown_offers_only_what_the_sampler_can_follow(studio):
    studio.picker.sampler.value = "DPM++ 2M"
    assert "karras" in [v for _, v in studio.picker.schedule.options]
    studio.picker.schedule.value = "karras"
    studio.picker.sampler.value = "Euler a"  # cannot follow karras: back to automatic
    options = [v for _, v in studio.picker.schedule.options]
    assert "karras" not in options and studio.picker.schedule.value == "automatic"
    assert studio.settings.schedule == "automatic"
    assert options == sdlab.sampler_catalog.CATALOG["Euler a"].supported_schedules()


def test_a_sampler_that_changes_the_schedule_says_so(studio):
    picker = studio.picker
    picker.schedule.value = "karras"
    picker.sampler.value = "DDIM"  # DDIM takes only a timestep spacing: it cannot follow Karras
    assert studio.settings.schedule == "automatic"
    _, concrete = sdlab.sampler_catalog.resolve("DDIM", "automatic")  # what the core runs for it
    label = sdlab.noise_schedules.schedule_label(concrete)
    assert picker.said == f"DDIM cannot follow the Karras schedule, so the schedule is now Automatic ({label})."
    assert "sdlab-notice" in picker.note.value and "Karras" in picker.note.value
    assert dict((v, k) for k, v in picker.schedule.options)["automatic"] == f"Automatic ({label})"
    picker.schedule.value = "simple"
    picker.sampler.value = "Euler"  # Euler can follow Simple: nothing changes, nothing is said
    assert studio.settings.schedule == "simple" and picker.said == "" and picker.note.value == ""


def test_generate_runs_the_core_with_the_settings_and_shows_frames(studio, lab, monkeypatch):
    asked = []
    real = generation.generate_async

    def spy(lab_, settings, **kw):
        asked.append((settings, kw))
        return real(lab_, settings, **kw)

    monkeypatch.setattr(type(lab), "generate_async", lambda self, s, **kw: spy(self, s, **kw))
    studio.prompt.value = "a red cube"
    studio.steps.value = 6
    studio.picker.value = ("Heun", "karras")
    studio.seed_mode.value, studio.seed.value = "fixed", 3
    studio.generate_button.click()
    assert studio.idle.wait(60)
    settings, kw = asked[0]
    assert (settings.prompt, settings.steps, settings.sampler, settings.schedule, settings.seed) == \
        ("a red cube", 6, "Heun", "karras", 3)
    assert kw["preview"] == "approx" and kw["preview_target"] == "x0"
    run = studio.history[-1]
    assert run.settings.seed == 3 and run.nfe == 11
    assert studio.viewer.panel.frames >= 1
    assert all(img.value for img in studio.viewer.panel.channels)
    assert "done: step 6/6" in studio.progress.value and "NFE 11" in studio.progress.value
    assert not studio.generate_button.disabled and studio.stop_button.disabled
    # after the run the slider scrubs through the records
    assert studio.viewer.slider.max == len(run.steps)
    before = studio.viewer.panel.image.value
    studio.viewer.slider.value = 1
    assert studio.viewer.panel.image.value != before and "step 1/6" in studio.viewer.info.value
    studio.viewer.target.value = "xt"
    assert "sigma" in studio.viewer.info.value


def test_stop_halts_a_long_run(studio):
    studio.steps.value = 150
    studio.prompt.value = "long"
    frames = []
    original = studio._on_step

    def watch(event):
        frames.append(event.record.step)
        if event.record.step == 3:
            studio.stop_button.click()
        original(event)

    studio._on_step = watch
    studio.generate_button.click()
    assert studio.idle.wait(60)
    run = studio.history[-1]
    assert run.stopped and len(run.steps) < 150 and run.image is not None
    assert "stopped" in studio.progress.value


def test_generate_during_a_run_does_not_start_another(studio):
    studio.steps.value = 150
    started = []
    original = studio._on_step

    def watch(event):
        if event.record.step == 2 and not started:
            started.append(studio.job)
            studio.generate_button.click()  # a second press while running
            studio.stop_button.click()
        original(event)

    studio._on_step = watch
    studio.generate_button.click()
    assert studio.idle.wait(60)
    assert studio.job is started[0] and len(studio.history) == 1
    assert "already going" in studio.error.value


def test_errors_appear_in_the_ui(studio):
    studio.width.value = 65
    studio.generate_button.click()
    assert "multiple of 8" in studio.error.value and studio.job is None
    assert isinstance(studio.last_error, ValueError)
    studio.width.value = 64
    studio.steps.value = 2
    studio.generate_button.click()
    assert studio.idle.wait(60)
    assert studio.error.value == ""


def test_worker_errors_appear_in_the_ui(studio, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("the UNet caught fire")

    monkeypatch.setattr(studio.lab.pipe.unet, "forward", boom)
    studio.steps.value = 2
    studio.generate_button.click()
    assert studio.idle.wait(60)
    assert "the UNet caught fire" in studio.error.value and studio.progress.value == "failed"
    assert not studio.generate_button.disabled


def test_history_grows_restores_and_saves(studio, tmp_path):
    studio.steps.value = 2
    studio.seed_mode.value, studio.seed.value = "fixed", 1
    studio.generate_button.click()
    assert studio.idle.wait(60)
    studio.prompt.value = "something else"
    studio.steps.value = 3
    studio.seed.value = 2
    studio.generate_button.click()
    assert studio.idle.wait(60)
    assert len(studio.history) == 2 and len(studio.history_box.children) == 2
    first = studio.history_box.children[0]
    show, restore = first.children[2], first.children[3]
    show.click()
    assert studio.shown is studio.history[0]
    restore.click()
    assert studio.settings.steps == 2 and studio.settings.seed == 1 and studio.settings.prompt == ""
    studio.save_button.click()
    saved = list(tmp_path.glob("*.png"))
    assert len(saved) == 1 and "saved" in studio.save_status.value
    assert sdlab.read_settings(saved[0]).seed == 1
    studio.reuse.click()
    assert studio.settings.seed == 2  # the last run's seed


def test_step_viewer_alone(lab):
    run = lab.generate("x", steps=4, seed=1)
    viewer = sdlab.StepViewer(run)
    assert viewer.slider.max == 4 and viewer.panel.image.value
    viewer.slider.value = 2
    assert "step 2/4" in viewer.info.value
    assert viewer.decoder.layout.display == "none"  # no model given: approx only
    with_vae = sdlab.StepViewer(run, lab=lab)
    approx_frame = with_vae.panel.image.value
    with_vae.decoder.value = "vae"
    assert with_vae.panel.image.value != approx_frame and with_vae.panel.frames == 2


def test_sampler_picker_alone():
    picker = sdlab.SamplerPicker("DPM++ 2M Karras")
    assert picker.value == ("DPM++ 2M", "karras")
    picker.value = ("euler_ancestral", "automatic")
    assert picker.value == ("Euler a", "automatic")


def test_a_long_session_holds_the_history_cap_of_widgets_not_one_set_per_run(studio, tmp_path):
    from ipywidgets.widgets import widget

    from sdlab.widgets.studio import HISTORY_LIMIT

    studio.steps.value, studio.width.value, studio.height.value = 1, 32, 32
    studio.seed_mode.value = "fixed"

    def generate(seed):
        studio.seed.value = seed
        studio.generate_button.click()
        assert studio.idle.wait(60)

    for seed in range(HISTORY_LIMIT):
        generate(seed)
    live = len(widget._instances)
    for seed in range(HISTORY_LIMIT, HISTORY_LIMIT + 6):
        generate(seed)
    assert len(widget._instances) == live  # each new thumbnail replaces a closed one
    assert len(studio.history) == len(studio.history_box.children) == HISTORY_LIMIT
    assert studio.history_box.children[0].children[2].description == "#7 show"  # numbers stay the session's
    studio.show(studio.history[-1])
    studio.save_button.click()
    studio.show(studio.history[-2])
    studio.save_button.click()
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(names) == 2 and names[0].startswith(f"sdlab-{HISTORY_LIMIT + 5:04d}")  # no save overwrites another
