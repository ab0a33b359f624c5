"""The Studio headless: set widget values, click, and check the settings and what the core did."""
from __future__ import annotations

import html

import pytest

import sdlab
from pictures import ROUGH, roughness
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
    assert studio.seed.layout.display == "none"  # the box is an input: in random mode nothing would use it


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
    prepared, kw = asked[0]
    settings = prepared.settings  # prepared by the Studio, so that its seed is on screen before the run starts
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
            said.append(studio.error.value)
            studio.stop_button.click()
        original(event)

    said = []
    studio._on_step = watch
    studio.generate_button.click()
    assert studio.idle.wait(60)
    assert studio.job is started[0] and len(studio.history) == 1
    assert "already going" in said[0]  # (said while it went on; the run's own state replaces it at the end)


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
    assert "the UNet caught fire" in studio.error.value and studio.progress.value.startswith("failed")
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
    assert studio.shown is studio.history[0] and ">1<" in studio.seed_used.value
    restore.click()
    assert studio.settings.steps == 2 and studio.settings.seed == 1 and studio.settings.prompt == ""
    studio.save_button.click()
    saved = list(tmp_path.glob("*.png"))
    assert len(saved) == 1 and "saved" in studio.save_status.value
    assert sdlab.read_settings(saved[0]).seed == 1
    studio.show(studio.history[1])
    studio.reuse.click()
    assert studio.settings.seed == 2  # the seed of the run on screen


def test_step_viewer_alone(lab):
    run = lab.generate("x", steps=4, seed=1)
    viewer = sdlab.StepViewer(run)
    assert viewer.slider.max == 4 and viewer.panel.image.value
    viewer.slider.value = 2
    assert "step 2/4" in viewer.info.value
    assert viewer.decoder.layout.display == "none"  # no model given: approx only
    with_vae = sdlab.StepViewer(run, lab=lab)
    final = with_vae.panel.image.value  # the last step of a finished run: the run's own picture
    with_vae.decoder.value = "vae"
    assert with_vae.panel.image.value == final and "the run's picture" in with_vae.info.value
    with_vae.slider.value = 2
    vae_frame = with_vae.panel.image.value
    with_vae.decoder.value = "approx"
    assert with_vae.panel.image.value != vae_frame and with_vae.panel.frames == 4


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


# -- what a class sees (issue 19, item 6) ---------------------------------------------------------------
def _images(widget):
    """Every Image widget inside a widget."""
    import ipywidgets as W

    if isinstance(widget, W.Image):
        yield widget
    for child in getattr(widget, "children", ()):
        yield from _images(child)


def _generate(studio, stop_at: int | None = None):
    original = studio._on_step

    def watch(event):
        if stop_at is not None and event.record.step == stop_at:
            studio.stop_button.click()
        original(event)

    studio._on_step = watch
    try:
        studio.generate_button.click()
        assert studio.idle.wait(60)
    finally:
        studio._on_step = original
    return studio.history[-1]


def test_every_image_pane_holds_a_picture_before_any_run(lab, tmp_path):
    """An empty Image widget is a broken-image icon in the page: every pane starts as a flat grey picture."""
    import io

    import numpy as np
    from PIL import Image

    from sdlab.widgets.look import placeholder

    studio = sdlab.Studio(lab, output_dir=tmp_path)
    assert "Built-in tiny model" in studio.children[1].value  # (the model note, first under the style)
    panes = list(_images(studio))
    assert len(panes) == 5  # the picture and 4 latent channels
    for pane in panes:
        img = Image.open(io.BytesIO(pane.value))
        img.load()  # a whole JPEG
        grey = np.asarray(img.convert("L"))
        assert pane.format == "jpeg" and min(img.size) > 0 and grey.max() - grey.min() <= 2
    # a run that kept no tensors has no picture for its earlier steps: the panes go back to grey, never empty
    run = lab.generate("x", steps=2, seed=1, width=32, height=32, record=False)
    viewer = sdlab.StepViewer(run)
    viewer.slider.value = 1
    assert viewer.panel.image.value == placeholder() and "kept no tensors" in viewer.info.value
    assert all(img.value for img in _images(viewer))


def test_after_stop_the_picture_is_the_last_x0_not_noise(toy, tmp_path):
    from sdlab.previews import approx_rgb, to_jpeg

    studio = sdlab.Studio(toy, prompt="a large blue square", steps=150, seed=7, output_dir=tmp_path)
    run = _generate(studio, stop_at=5)
    assert run.stopped and len(run.records) < 150
    shown = studio.viewer.panel.image.value
    assert shown == to_jpeg(approx_rgb(run.records[-1].view("x0"), "toy"))  # the last record's x0, as previewed
    assert roughness(shown) < ROUGH
    import numpy as np

    assert roughness(to_jpeg(np.asarray(run.image))) > 3 * ROUGH  # what the pipeline decoded at the stop: noise
    thumbnail = studio.history_box.children[0].children[0].value
    assert roughness(thumbnail) < ROUGH and "stopped at step 5" in studio.history_box.children[0].children[1].value
    studio.viewer.slider.value = 1
    studio.viewer.slider.value = studio.viewer.slider.max
    assert studio.viewer.panel.image.value == shown
    assert all(img.value for img in _images(studio))


def test_the_last_step_scrubbed_to_is_the_picture_shown_after_the_run(toy, tmp_path):
    import numpy as np

    from sdlab.previews import to_jpeg

    studio = sdlab.Studio(toy, prompt="a small red circle", steps=8, seed=2, output_dir=tmp_path)
    run = _generate(studio)
    after = studio.viewer.panel.image.value
    assert after == to_jpeg(np.asarray(run.image.convert("RGB")))  # the run's own picture, at full size
    viewer = studio.viewer
    viewer.slider.value = 1
    assert viewer.panel.image.value != after
    viewer.slider.value = viewer.slider.max
    assert viewer.panel.image.value == after
    viewer.decoder.value, viewer.target.value = "vae", "xt"  # whatever the view's choices, the last step is the run's picture
    assert viewer.panel.image.value == after


def test_showing_a_past_run_shows_its_seed_settings_and_messages(toy, tmp_path):
    studio = sdlab.Studio(toy, output_dir=tmp_path, steps=4, width=64, height=64)
    studio.seed_mode.value = "fixed"
    studio.prompt.value, studio.seed.value = "a red fox", 11  # 'fox' is not a word the toy knows: a notice
    first = _generate(studio)
    studio.prompt.value, studio.seed.value, studio.steps.value = "a blue star", 22, 7
    studio.picker.value = ("DDIM", "automatic")
    second = _generate(studio)
    assert any("fox" in p for p in first.notices) and second.notices and not any("fox" in p for p in second.problems)
    assert ">22<" in studio.seed_used.value and "a blue star" in studio.summary.value
    studio.history_box.children[0].children[2].click()  # "#1 show"
    assert studio.shown is first
    assert ">11<" in studio.seed_used.value and ">22<" not in studio.seed_used.value
    assert studio.progress.value.startswith("#1 done: step 4/4") and "seed 11" in studio.progress.value
    assert "a red fox" in studio.summary.value and "DDIM" not in studio.summary.value
    assert "fox" in studio.notes.value and studio.error.value == ""
    assert not any(html.escape(p) in studio.notes.value for p in second.notices)
    studio.history_box.children[1].children[2].click()  # "#2 show": and back
    assert ">22<" in studio.seed_used.value and "fox" not in studio.notes.value


def test_the_seed_used_is_shown_in_random_mode(lab, tmp_path):
    studio = sdlab.Studio(lab, output_dir=tmp_path, steps=3, width=32, height=32)
    assert studio.seed_mode.value == "random" and "none yet" in studio.seed_used.value and studio.reuse.disabled
    during = []
    original = studio._on_step
    studio._on_step = lambda event: (during.append(studio.seed_used.value), original(event))
    studio.generate_button.click()
    assert studio.idle.wait(60)
    run = studio.history[-1]
    shown = f">{run.settings.seed}<"
    assert during and all(shown in text for text in during)  # from the first step on
    assert shown in studio.seed_used.value and f"seed {run.settings.seed}" in studio.progress.value
    assert studio.seed_mode.value == "random" and studio.settings.seed is None  # still random: nothing was fixed
    assert studio.seed.layout.display == "none"
    studio.reuse.click()  # unless asked
    assert studio.seed_mode.value == "fixed" and studio.settings.seed == run.settings.seed
    assert studio.seed.layout.display == ""


def test_notices_are_neutral_and_warnings_red_each_said_once(lab, tmp_path, monkeypatch):
    import torch

    studio = sdlab.Studio(lab, output_dir=tmp_path, steps=2, width=32, height=32)
    run = lab.generate("x", steps=2, seed=1, width=32, height=32)
    run.problems = ["Worth knowing.", "Something is wrong.", "Worth knowing."]
    run.notices = ["Worth knowing.", "Worth knowing."]
    studio.show(run)
    assert studio.notes.value.count("Worth knowing.") == 1 and "sdlab-notice" in studio.notes.value
    assert "#b00" not in studio.notes.value
    assert "Something is wrong." in studio.error.value and "#b00" in studio.error.value
    assert "Worth knowing" not in studio.error.value
    # a real warning from the core: latents that became NaN
    monkeypatch.setattr(lab.pipe.unet, "forward", lambda sample, *a, **k: (torch.full_like(sample, float("nan")),))
    with pytest.warns(sdlab.SdlabWarning):
        bad = _generate(studio)
    assert bad.problems and not bad.notices
    assert "NaN" in studio.error.value and "#b00" in studio.error.value and studio.notes.value == ""


def test_the_full_vae_preview_keeps_coming_during_a_long_run(monkeypatch):
    """The "full VAE" preview of a 150-step run on the teaching model came at steps 23 and 109 and nowhere
    else: the decoder's minimum interval was a second, most of such a run. Its time budget (7 % of the run)
    is what bounds the cost; with steps and decodes of 10 ms each (the toy's are 3-7 ms here), a frame now
    comes at least every quarter of a second (25 steps), and the decodes stay within the budget."""
    import numpy as np
    import torch

    from sdlab import previews

    clock = [0.0]
    monkeypatch.setattr(previews.time, "perf_counter", lambda: clock[0])

    def decode(vae, latents):
        clock[0] += 0.010
        return np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(previews, "vae_rgb", decode)
    previewer = previews.Previewer(decoder="vae")  # the defaults the Studio's "full VAE" runs with
    frames = []
    for step in range(1, 151):
        if previewer(torch.zeros(4, 1, 1)) is not None:
            frames.append(step)
        clock[0] += 0.010
    gaps = np.diff([0, *frames, 150])
    assert len(frames) >= 5 and gaps.max() <= 25, frames
    assert previewer.spent <= 0.08 * clock[0]  # and within its budget


def test_a_studio_built_under_a_presentation_scale_is_that_much_larger(lab, tmp_path):
    from sdlab import plots

    def sizes(widget):
        """Every width and height set in pixels, in widget order."""
        for w in [widget, *getattr(widget, "children", ())]:
            layout = getattr(w, "layout", None)
            for value in (getattr(layout, "width", None), getattr(layout, "height", None)):
                if isinstance(value, str) and value.endswith("px"):
                    yield float(value[:-2])
            if w is not widget:
                yield from sizes(w)

    normal = sdlab.Studio(lab, output_dir=tmp_path)
    with plots.presentation(1.6):
        big = sdlab.Studio(lab, output_dir=tmp_path)
    after = sdlab.Studio(lab, output_dir=tmp_path)  # built once the scale is back to 1
    small, large = list(sizes(normal)), list(sizes(big))
    assert len(small) == len(large) >= 10 and list(sizes(after)) == small
    assert all(b == pytest.approx(1.6 * a, abs=0.5) for a, b in zip(small, large))
    assert big.viewer.panel.image.layout.width == "614px" and normal.viewer.panel.image.layout.width == "384px"
    style = big.children[0].value  # the text: ipywidgets' own font size and line height, scaled
    assert "sdlab-scale-160" in big._dom_classes and ".sdlab-scale-160{" in style
    assert "--jp-widgets-font-size:21px" in style and "--jp-widgets-inline-height:45px" in style
    assert normal.children[0].value == "" and "sdlab-scale-100" in after._dom_classes


def test_the_viewer_the_studio_and_the_step_grid_show_the_prompt_in_effect(lab, tmp_path):
    """A1111 prompt editing: the text each call was conditioned on is shown where the steps are shown."""
    from sdlab import plots

    run = lab.generate("a (red:1.2) circle [BREAK|] [a:b:0.5]", sampler="Euler", steps=6, seed=1, width=32, height=32)
    changes = run.prompt_changes()
    assert [i for i, _ in changes] == [0, 2, 3, 4, 5] and changes[0][1] == "a (red:1.2) circle BREAK a"
    viewer = sdlab.StepViewer(run)
    viewer.slider.value = 5  # record 4: call index 4, where [a:b:0.5] (ends at step 3) has switched to b
    assert "prompt in effect: &ldquo;a (red:1.2) circle  b&rdquo; <b>(the prompt changes here)</b>" in viewer.info.value
    viewer.slider.value = 6
    assert "circle BREAK b&rdquo;" in viewer.info.value and "changes here" in viewer.info.value
    # a plain prompt adds no line: its settings already say it
    plain = lab.generate("a red circle", steps=2, seed=1, width=32, height=32)
    assert plain.prompt_shown() is None and "prompt in effect" not in sdlab.StepViewer(plain).info.value
    # the Studio's progress line, written after every step of a run, says the prompt in effect then
    from sdlab.widgets.studio import _progress

    line = _progress(sdlab.StepEvent(run, run.records[4], None), elapsed=1.0)
    assert line.startswith("step 5/6") and "prompt in effect: &ldquo;a (red:1.2) circle  b&rdquo;" in line
    drawn = plots.step_grid([run], steps=[1, 2, 3, 4, 5, 6])
    labels = [ax.get_xlabel().replace("\n", " ") for ax in drawn.axes]
    assert labels[0].startswith("prompt: a (red:1.2) circle") and labels[2] != "" and "b" in labels[4]
