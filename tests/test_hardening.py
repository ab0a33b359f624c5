"""What users type and click, and the faults they cause: each found problem with its regression test."""
from __future__ import annotations

import _thread
import threading
import time

import logging
import warnings
import pytest
import torch

import sdlab
from sdlab.generation import BusyError


def _wait_idle(studio, timeout=60):
    assert studio.idle.wait(timeout), "the Studio did not come back to idle"


# --- 1. a job is done only after its on_done has run -------------------------------------------------------
def test_job_is_not_done_while_on_done_runs_and_wait_does_not_deadlock(lab):
    seen = {}

    def on_done(job):
        seen["run"] = job.wait(timeout=5)  # the result is there already: no deadlock
        seen["done_inside"] = job.done
        time.sleep(0.3)

    job = lab.generate_async("x", steps=2, seed=1, width=32, height=32, on_done=on_done)
    job.wait(timeout=30)
    assert not job.done or "done_inside" in seen  # wait() returns once the run is over...
    deadline = time.time() + 10
    while not job.done and time.time() < deadline:
        time.sleep(0.01)
    assert job.done and seen["done_inside"] is False and seen["run"] is job.run  # ...done only after on_done


def test_a_view_callback_that_raises_does_not_leave_the_job_running(lab):
    def on_done(job):
        raise RuntimeError("a bug in a view")

    job = lab.generate_async("x", steps=2, seed=1, width=32, height=32, on_done=on_done)
    job.wait(timeout=30)
    deadline = time.time() + 10
    while not job.done and time.time() < deadline:
        time.sleep(0.01)
    assert job.done and isinstance(job.callback_error, RuntimeError)
    assert lab.generate("x", steps=1, seed=1, width=32, height=32).done


def test_studio_ignores_the_end_of_a_run_it_no_longer_shows(lab, tmp_path):
    studio = sdlab.Studio(lab, output_dir=tmp_path, steps=2, width=32, height=32)
    studio.on_generate()
    _wait_idle(studio)
    old = studio.job
    studio.on_generate()  # a new run; then the old run's on_done arrives late
    studio._on_done(old, studio._ticket - 1)
    assert studio.generate_button.disabled or studio.idle.is_set()  # the late call changed nothing
    _wait_idle(studio)
    assert studio.generate_button.disabled is False and studio.stop_button.disabled is True
    assert len(studio.history) == 2


def test_generate_clicked_while_the_last_run_finishes_is_refused_not_lost(lab, tmp_path):
    studio = sdlab.Studio(lab, output_dir=tmp_path, steps=2, width=32, height=32)
    gate = threading.Event()
    original = studio._on_done

    def slow_on_done(job, ticket=None):
        gate.wait(5)
        original(job, ticket)

    studio._on_done = slow_on_done
    studio.on_generate()
    studio.job.wait(timeout=30)  # the run is over, its on_done is still going
    studio.on_generate()         # clicked in that window
    assert "already going" in studio.error.value
    gate.set()
    _wait_idle(studio)
    assert studio.generate_button.disabled is False and len(studio.history) == 1


# --- 2. restoring what sdlab reads -----------------------------------------------------------------------
def test_restore_settings_without_a_size_and_beyond_the_sliders(lab, tmp_path):
    studio = sdlab.Studio(lab, output_dir=tmp_path)
    settings = sdlab.read_settings("a castle\nSteps: 300, Sampler: Euler, CFG scale: 35, Seed: 7")
    said = studio.restore(settings)
    native = sdlab.generation.native_size(lab)
    assert (studio.settings.width, studio.settings.height) == (native, native)
    assert (studio.settings.steps, studio.settings.cfg, studio.settings.seed) == (300, 35.0, 7)
    assert studio.steps.value == 300 and studio.cfg.value == 35.0  # widened, not clamped
    assert any("native" in s for s in said) and any("Steps 300" in s for s in said) and any("CFG" in s for s in said)
    assert "native" in studio.notes.value and studio.error.value == ""  # said as a notice: nothing is wrong
    odd = sdlab.read_settings("x\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512")
    assert studio.restore(odd) and studio.settings.width == native


def test_restore_keeps_what_the_controls_do_not_show(lab, tmp_path):
    studio = sdlab.Studio(lab, output_dir=tmp_path)
    run = lab.generate("x", sampler="Euler", schedule="karras", schedule_params={"rho": 5.0}, steps=3, seed=2, width=32, height=32,
                       batch_size=2)
    assert studio.restore(run.settings) == []
    assert studio.settings == run.settings


def test_restore_refuses_settings_that_cannot_run_and_changes_nothing(lab, tmp_path):
    studio = sdlab.Studio(lab, output_dir=tmp_path)
    before = studio.settings
    bad = sdlab.read_settings("x\nSteps: 4, Sampler: Euler, Schedule type: Turbo Wobble, CFG scale: 7, Seed: 1, "
                              "Size: 64x64")
    with pytest.raises(ValueError, match="Turbo Wobble"):
        studio.restore(bad)
    assert studio.settings == before
    studio._restore_clicked(bad)  # from the history's button: said in the UI
    assert "Turbo Wobble" in studio.error.value and studio.settings == before
    with pytest.raises(TypeError, match="Settings"):
        studio.restore({"steps": 3})


# --- 3. two threads, one model ----------------------------------------------------------------------------
def test_generate_async_from_many_threads_starts_exactly_one(lab):
    barrier, results = threading.Barrier(6), []

    def call():
        barrier.wait()
        try:
            results.append(lab.generate_async("x", steps=3, seed=1, width=32, height=32))
        except BusyError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    jobs = [r for r in results if not isinstance(r, BusyError)]
    assert len(results) == 6 and len(jobs) == 1
    assert jobs[0].wait(timeout=30).done


# --- 4. an exception inside on_step keeps the partial run, marked failed --------------------------------
def _raise_at(step):
    def on_step(event):
        if event.record.nfe == step:
            raise ValueError("my callback broke")
    return on_step


def test_sync_run_that_raises_in_on_step_stays_inspectable(lab):
    with pytest.raises(ValueError, match="my callback broke") as caught:
        lab.generate("x", steps=5, seed=1, width=32, height=32, on_step=_raise_at(3))
    run = caught.value.run
    assert run.failed and run.state == "failed" and "failed" in repr(run)
    assert len(run.records) == 3 and run.final_latents is not None and run.image is None
    assert lab.generate("x", steps=2, seed=1, width=32, height=32).done  # the lab is free


def test_async_job_that_raises_in_on_step_shows_failed(lab):
    job = lab.generate_async("x", steps=5, seed=1, width=32, height=32, on_step=_raise_at(2))
    with pytest.raises(ValueError):
        job.wait(timeout=30)
    assert job.run.state == "failed" and len(job.run.records) == 2 and "failed" in repr(job)


# --- 5. NaN: where, and advice for the dtype -------------------------------------------------------------
def test_nan_latents_say_the_step_and_fit_the_dtype(lab):
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] >= 3:  # from the third UNet call on
            sample = output[0] if isinstance(output, tuple) else output.sample
            sample.fill_(float("nan"))
        return output

    handle = lab.pipe.unet.register_forward_hook(poison)
    try:
        with pytest.warns(sdlab.SdlabWarning):
            run = lab.generate("x", sampler="Euler", steps=5, seed=1, width=32, height=32)
    finally:
        handle.remove()
    problem = run.problems[-1]
    assert "from step 3 of 5" in problem
    assert "dtype='float32'" not in problem and "float32" in problem  # the model already is float32


# --- 6. prompts longer than the text encoder's window ---------------------------------------------------
def test_truncated_prompt_and_negative_prompt_are_kept_with_every_run(lab, caplog):
    long = "a photo of a lighthouse, " * 12 + "purple dragon"
    negative = "blurry, " * 40 + "watermark"
    # read as A1111 reads it (the default), a long prompt takes more chunks of 75 tokens: nothing is dropped,
    # and neither transformers nor diffusers has anything to say about it
    with warnings.catch_warnings(record=True) as said, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        run = lab.generate(long, negative_prompt=negative, steps=1, seed=1, width=32, height=32)
    assert run.prompt_chunks > 1 and not [w for w in said if "dropped" in str(w.message)]
    assert not [r for r in caplog.records if "77" in r.getMessage()] and run.problems == []
    for k in range(2):  # the notice is said once per session; every run keeps it in its problems
        with warnings.catch_warnings(record=True) as said, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            run = lab.generate(long, negative_prompt=negative, steps=1, seed=1, width=32, height=32,
                               prompt_syntax="plain")
        assert len([w for w in said if "dropped" in str(w.message)]) == (2 if k == 0 else 0)
        # transformers' and diffusers' own lines about it (stderr in a notebook) are not repeated
        assert not [r for r in caplog.records if "77" in r.getMessage()]
        assert sum("dropped" in p for p in run.problems) == 2
        assert any("purple dragon" in p and "The prompt" in p for p in run.problems)
        assert any("watermark" in p and "The negative prompt" in p for p in run.problems)
    assert lab.generate("a short prompt", steps=1, seed=1, width=32, height=32).problems == []


# --- faults: the kernel interrupted ---------------------------------------------------------------------
def test_keyboard_interrupt_during_a_synchronous_run_leaves_the_lab_working(lab):
    def interrupt(event):
        if event.record.nfe == 2:
            raise KeyboardInterrupt  # what the kernel raises in its main thread, here mid-run

    with pytest.raises(KeyboardInterrupt) as caught:
        lab.generate("x", steps=5, seed=1, width=32, height=32, on_step=interrupt)
    assert caught.value.run.failed and len(caught.value.run.records) == 2
    assert not lab._lock.locked() and lab.pipe._interrupt is False
    hooks = len(lab.pipe.unet._forward_hooks) + len(lab.pipe.unet._forward_pre_hooks)
    assert hooks == 0  # the taps are gone
    again = lab.generate("x", steps=3, seed=4, width=32, height=32)
    assert again.image.tobytes() == lab.generate("x", steps=3, seed=4, width=32, height=32).image.tobytes()


def test_keyboard_interrupt_in_the_kernel_during_a_studio_run(lab, tmp_path):
    studio = sdlab.Studio(lab, output_dir=tmp_path, steps=30, width=32, height=32)
    studio.on_generate()
    with pytest.raises(KeyboardInterrupt):
        _thread.interrupt_main()  # the kernel's interrupt, while the main thread waits on the run
        for _ in range(200):
            time.sleep(0.01)
    _wait_idle(studio)  # the worker was not stuck
    assert studio.job.done and studio.generate_button.disabled is False
    studio.on_generate()
    _wait_idle(studio)
    assert len(studio.history) == 2 and studio.history[-1].done
    assert torch.equal(lab.generate("x", steps=2, seed=1, width=32, height=32).final_latents,
                       lab.generate("x", steps=2, seed=1, width=32, height=32).final_latents)


# --- every entry point: an sdlab sentence naming the argument, file or field ------------------------------
@pytest.mark.parametrize("call, error, match", [
    (lambda lab: sdlab.load(123), TypeError, "model must name a model by a string or path"),
    (lambda lab: sdlab.unload(42), TypeError, "which must name a model"),
    (lambda lab: lab.set_sampler(None), TypeError, "sampler must be a name"),
    (lambda lab: sdlab.make_scheduler(lab, "Euler", "karras", rho="x"), ValueError, "rho must be a finite number > 0"),
    (lambda lab: sdlab.make_scheduler(None, "Euler"), TypeError, "config_or_scheduler must be a scheduler config"),
    (lambda lab: lab.generate("x", eta="a"), TypeError, "eta must be a number >= 0, not str 'a'"),
    (lambda lab: lab.generate("x", schedule_params="rho=3"), TypeError, "schedule_params must be a dict"),
    (lambda lab: lab.generate("x", sampler="Euler", schedule="karras", schedule_params={"rho": -1}), ValueError,
     "rho must be a finite number > 0"),
    (lambda lab: lab.generate("x", schedule_params={"zzz": 1}), ValueError, r"\['zzz'\] are neither parameters of the"),
    (lambda lab: lab.generate(123), TypeError, "prompt must be a string .or sdlab.Settings., not int"),
    (lambda lab: lab.generate("x", steps=5000), ValueError, "from 1 to 1000"),
    (lambda lab: sdlab.read_settings(b"garbage"), ValueError, "source: cannot read the 7 bytes given as an image"),
    (lambda lab: sdlab.read_settings("x\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1"), ValueError,
     "'Steps: many' is not a whole number"),
    (lambda lab: sdlab.read_settings("x\nSteps: 20, Sampler: Euler, CFG scale: high, Seed: 1"), ValueError,
     "'CFG scale: high' is not a number"),
])
def test_entry_points_say_what_is_wrong(lab, call, error, match):
    with pytest.raises(error, match=match):
        call(lab)


def test_a_none_negative_prompt_is_no_negative_prompt(lab):
    a = lab.generate("x", negative_prompt=None, steps=2, seed=1, width=32, height=32)
    b = lab.generate("x", negative_prompt="", steps=2, seed=1, width=32, height=32)
    assert a.image.tobytes() == b.image.tobytes()


def test_damaged_sdlab_settings_fall_back_to_the_a1111_text(lab, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    run = lab.generate("a castle", sampler="Euler", steps=3, seed=8, width=32, height=32)
    info = PngInfo()
    info.add_text("parameters", run.infotext())
    info.add_text("sdlab", '{"settings": {"steps": 3,')  # cut off
    path = tmp_path / "damaged.png"
    run.image.save(path, pnginfo=info)
    with pytest.warns(sdlab.SdlabNotice, match="damaged"):
        settings = sdlab.read_settings(path)
    assert (settings.prompt, settings.steps, settings.seed, settings.sampler) == ("a castle", 3, 8, "Euler")
    only = tmp_path / "only.png"
    info = PngInfo()
    info.add_text("sdlab", "not json")
    run.image.save(only, pnginfo=info)
    with pytest.raises(ValueError, match="damaged and it has no A1111 text"):
        sdlab.read_settings(only)


# --- one lock per model: nothing changes a model while a run is going ---------------------------------------
KW = dict(prompt="a lighthouse", steps=6, seed=4, width=32, height=32, sampler="DPM++ 2M")


def test_set_sampler_during_a_run_is_refused_and_the_run_is_unchanged(lab):
    plain = lab.generate(**KW)
    refused = []

    def meddle(event):  # from the callback, in the run's own thread
        try:
            lab.set_sampler("Euler")
        except BusyError as exc:
            refused.append(str(exc))

    run = lab.generate(**KW, on_step=meddle)
    assert len(refused) == plain.nfe and "A run is going on 'tiny'" in refused[0]
    assert run.image.tobytes() == plain.image.tobytes()
    started, errors = threading.Event(), []

    def other_thread():
        started.wait(10)
        for _ in range(20):
            try:
                lab.set_sampler("Euler a")
            except BusyError:
                errors.append("busy")
            time.sleep(0.001)

    t = threading.Thread(target=other_thread)
    t.start()
    run = lab.generate(**KW, on_step=lambda e: started.set())
    t.join(10)
    assert run.image.tobytes() == plain.image.tobytes()


def test_a_plain_pipe_call_after_generate_runs_what_the_user_set(lab):
    mine = lab.set_sampler("DDIM")
    lab.generate(**KW)  # DPM++ 2M for this run only
    assert lab.pipe.scheduler is mine
    with pytest.raises(ValueError):
        lab.generate(**{**KW, "sampler": "Eulr"})
    assert lab.pipe.scheduler is mine


def test_threads_of_an_executor_on_one_model_take_turns(lab):
    from concurrent.futures import ThreadPoolExecutor

    grid = dict(x="seed", x_values=[1, 2, 3, 4], prompt="x", steps=3, width=32, height=32, progress=False)
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = sdlab.sweep(lab, executor=pool, **grid)
    local = sdlab.sweep(lab, **grid)
    assert threaded.errors == {}
    assert [r.image.tobytes() for r in threaded.runs[0]] == [r.image.tobytes() for r in local.runs[0]]
    assert lab.pipe._progress_bar_config.get("disable") is True  # (the lab fixture's own setting, kept)


def test_an_unloaded_or_evicted_model_says_so_and_how_to_load_it(clean_registry):
    lab = sdlab.load("tiny")
    sdlab.unload(lab)
    for call in (lambda: lab.generate("x", steps=2), lambda: lab.set_sampler("Euler"),
                 lambda: sdlab.make_scheduler(lab, "Euler"), lambda: lab.default_scheduler):
        with pytest.raises(sdlab.ModelUnloadedError, match=r"'tiny' was unloaded \(sdlab.unload\(\)\).*sdlab.load\('tiny'\)"):
            call()
    sdlab.set_max_resident(1)
    first = sdlab.load("tiny")
    sdlab.load("toy")
    with pytest.raises(sdlab.ModelUnloadedError, match="evicted to load 'toy': at most 1 models stay loaded"):
        first.generate("x", steps=2)


def test_a_model_with_a_run_going_is_not_unloaded(clean_registry):
    lab = sdlab.load("tiny")
    lab.pipe.set_progress_bar_config(disable=True)
    outcome = {}

    def try_unload(event):
        if "error" not in outcome:
            try:
                sdlab.unload(lab)
            except BusyError as exc:
                outcome["error"] = str(exc)

    run = lab.generate(**KW, on_step=try_unload)
    assert "cannot be unloaded (sdlab.unload())" in outcome["error"] and lab.is_loaded and run.image is not None
    sdlab.unload(lab)
    assert not lab.is_loaded


def test_a_scheduler_config_from_a_file_is_checked_before_anything_is_built(lab, tmp_path):
    import json

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    run = lab.generate("a castle", steps=3, seed=8, width=32, height=32, scheduler=sdlab.make_scheduler(lab, "Euler"))
    data = json.loads(Image.open(run.save(tmp_path / "good.png")).text["sdlab"])
    bad_cases = {
        "num_train_timesteps": (1_000_000_000, "num_train_timesteps'] is 1000000000; it must be a whole number"),
        "beta_end": (float("nan"), "beta_end'] is nan"),
        "trained_betas": ([0.5] * 20_000, "trained_betas'] must be a list of 1 to 10000"),
        "_class_name": ("os.system", "is not a diffusers scheduler class"),
        "_sdlab_recipe": ({"sampler": "Euler", "schedule": "karras", "params": {"rho": -1}}, "rho must be a finite"),
        "timestep_spacing": ("sideways", "timestep_spacing'] is 'sideways'; it must be one of linspace"),
        "use_beta_sigmas": (True, "diffusers could not build SdlabEulerDiscreteScheduler"),  # and use_karras_sigmas
    }
    for key, (value, message) in bad_cases.items():
        doc = json.loads(json.dumps(data))
        doc["settings"]["scheduler_config"][key] = value
        if key == "use_beta_sigmas":
            doc["settings"]["scheduler_config"]["use_karras_sigmas"] = True
        info = PngInfo()
        info.add_text("sdlab", json.dumps(doc))
        path = tmp_path / f"bad-{key}.png"
        run.image.save(path, pnginfo=info)
        settings = sdlab.read_settings(path)
        with pytest.raises(ValueError, match=r"scheduler_config.*" + message.replace("[", r"\[").replace("(", r"\(")):
            lab.generate(settings)
    assert lab.generate(sdlab.read_settings(tmp_path / "good.png")).image.tobytes() == run.image.tobytes()


# --- files are judged by what they are, and a pickled Lab loads the way it was loaded -----------------------
def test_a_pickle_checkpoint_behind_a_safetensors_name_is_refused(clean_registry, tmp_path, tiny_single_file):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04 a pickle, supposedly")
    link = tmp_path / "benign.safetensors"
    link.symlink_to(ckpt)
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(ckpt.read_bytes())
    for path in (link, renamed):
        for allow in (False, True):
            with pytest.raises(sdlab.UnsafeCheckpointError, match="not a readable .safetensors file"):
                sdlab.load(path, allow_pickle=allow)
    good_link = tmp_path / "good.safetensors"
    good_link.symlink_to(tiny_single_file)
    from sdlab.models import classify_source, is_safetensors_file

    assert is_safetensors_file(tiny_single_file) and not is_safetensors_file(ckpt)
    assert classify_source(str(good_link)) == ("single_file", str(tiny_single_file.resolve()))
    assert sdlab.loaded() == []


def test_a_pickled_lab_keeps_how_it_was_loaded(clean_registry, tiny_single_file, tiny_folder):
    import pickle

    from sdlab.models import LabReference

    lab = sdlab.load(tiny_single_file, config=str(tiny_folder), offline=True)
    ref = pickle.loads(pickle.dumps(lab))
    assert isinstance(ref, LabReference) and dict(ref.pipeline_kwargs) == {"config": str(tiny_folder)}
    assert ref.resolve() is lab  # resolves to the resident model, loaded the same way
    sdlab.unload()
    odd = sdlab.load("tiny", text_encoder_hint=object())
    ref = pickle.loads(pickle.dumps(odd))
    assert ref.unsent == ("text_encoder_hint",)
    with pytest.raises(sdlab.LoadError, match="text_encoder_hint=<an object>, which cannot be sent"):
        ref.resolve()


# --- sizes are bounded by the memory there is, before anything is allocated -------------------------------
def test_sizes_and_batches_that_cannot_fit_are_refused_before_any_work(lab, toy, monkeypatch):
    from sdlab import devices

    monkeypatch.setattr(devices, "free_memory_bytes", lambda device: 2 ** 30)  # 1 GiB free, whatever the machine
    started = []
    for kw, fits in ((dict(width=100000, height=100000), "largest square that fits is about"),
                     (dict(batch_size=10 ** 9), "at 32x32, a batch of")):
        with pytest.raises(sdlab.GenerationError, match=fits + ".*Nothing was started"):
            lab.generate("x", steps=2, _started=started.append, **{"width": 32, "height": 32, **kw})
        with pytest.raises(sdlab.GenerationError, match="Nothing was started"):
            lab.generate_async("x", steps=2, **{"width": 32, "height": 32, **kw})
    assert started == [] and lab.generate("x", steps=2, width=32, height=32).image is not None
    from sdlab.infotext import parse_infotext  # an infotext's Size field enters through the same check

    big = parse_infotext("x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 100000x100000")
    with pytest.raises(sdlab.GenerationError, match="width=100000, height=100000 need about"):
        lab.generate(big)
    with pytest.raises(ValueError, match="the largest square size that fits is about"):
        sdlab.toy.dataset(20000, 20000)
    with pytest.raises(sdlab.GenerationError, match="largest square"):
        toy.generate("a red circle", width=8192, height=8192, steps=2)


def test_a_bad_max_resident_in_the_environment_never_breaks_import(monkeypatch):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sdlab; print(sdlab.max_resident())"], text=True,
                         capture_output=True, env={**__import__("os").environ, "SDLAB_MAX_RESIDENT": "abc"})
    assert out.returncode == 0 and out.stdout.strip() == "2" and "is not a whole number >= 1" in out.stderr
    from sdlab import models

    for value, want in (("0", 2), ("3", 3), ("", 2)):  # the same reading, in this process
        monkeypatch.setenv("SDLAB_MAX_RESIDENT", value)
        if value == "0":
            with pytest.warns(sdlab.SdlabWarning, match="not a whole number"):
                assert models._max_resident_from_env() == want
        else:
            assert models._max_resident_from_env() == want
    for bad in (0, 2.5, "x", True):
        with pytest.raises(sdlab.SdlabError, match="n must be a whole number >= 1, not .*It is how many models stay"):
            sdlab.set_max_resident(bad)


# --- issue 18, the rest by kind: each kind checked where it enters (tests/test_boundary.py walks them all) --
def test_numbers_of_any_numeric_type_mean_the_number_they_hold(lab):
    import numpy as np

    small = dict(steps=2, width=32, height=32)
    plain = lab.generate("x", seed=1, cfg=7.0, **small).images[0]
    numpy = lab.generate("x", seed=np.int64(1), cfg=np.float32(7), steps=np.int32(2), width=32.0, height=32)
    assert np.array_equal(np.asarray(plain), np.asarray(numpy.images[0]))
    assert numpy.settings.seed == 1 and type(numpy.settings.steps) is int and type(numpy.settings.cfg) is float
    for bad in (dict(steps=True), dict(cfg=False), dict(seed=np.bool_(True)), dict(steps=2.5), dict(width=float("nan")),
                dict(height=float("inf"))):
        with pytest.raises(sdlab.SdlabError, match=next(iter(bad))):
            lab.generate("x", **{**small, **bad})


def test_two_names_for_one_setting_are_refused_not_one_silently_dropped(lab):
    with pytest.raises(sdlab.InvalidArgument, match="cfg=7 and guidance_scale=5 are the same setting"):
        lab.generate("x", cfg=7, guidance_scale=5, steps=2)
    with pytest.raises(sdlab.InvalidArgument, match="steps=3 and num_inference_steps=4"):
        sdlab.Settings().updated(steps=3, num_inference_steps=4)


def test_run_options_are_checked_before_the_run_starts(lab):
    for bad, kind in ((dict(record_dtype="half"), ValueError), (dict(on_step=5), TypeError),
                      (dict(stop=True), TypeError), (dict(scheduler="Euler"), TypeError), (dict(record=1), TypeError)):
        with pytest.raises(kind, match=next(iter(bad))):
            lab.generate("x", steps=2, width=32, height=32, **bad)
    assert not lab._lock.locked()


def test_schedules_and_plans_refuse_what_they_cannot_compute():
    import numpy as np

    with pytest.raises(sdlab.InvalidArgument, match="steps must be a whole number from 1 to 10000"):
        sdlab.plan(sdlab.make_scheduler(sdlab.load("tiny"), "Euler"), 10 ** 7)
    with pytest.raises(sdlab.InvalidArgument, match="rho"):
        sdlab.sigmas("karras", 10, rho=0)
    with pytest.raises(sdlab.InvalidArgument, match="sigma_min"):
        sdlab.sigmas("karras", 10, sigma_min=-1.0)
    with pytest.raises(sdlab.InvalidArgument, match="sigma_max"):
        sdlab.sigmas("exponential", 10, sigma_max=float("nan"))
    with pytest.raises(sdlab.InvalidArgument, match="t must hold finite numbers"):
        sdlab.TrainingSchedule.stable_diffusion().t_to_sigma(np.array([1.0, np.nan]))
    assert sdlab.TrainingSchedule.stable_diffusion().t_to_sigma(500).shape == ()  # a number in, a number out


def test_infotext_with_bad_escapes_or_nested_json_is_read_or_refused_clearly(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    odd = sdlab.parse_infotext('x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32, Note: "bad \\q escape"')
    assert odd.steps == 2 and odd.extra["Note"] == "bad \\q escape"
    info = PngInfo()
    info.add_text("sdlab", "[" * 100_000 + "]" * 100_000)  # deeper than json can parse
    info.add_text("parameters", "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32")
    path = tmp_path / "deep.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.warns(sdlab.SdlabNotice, match="damaged"):
        assert sdlab.read_settings(path).steps == 3  # the documented fall-back to the A1111 text
    with pytest.raises(sdlab.WrongType, match="text must be a string"):
        sdlab.parse_infotext(None)


def test_saving_says_what_is_wrong_with_the_path_and_never_leaves_a_truncated_png(lab, tmp_path, monkeypatch):
    import os

    run = lab.generate("x", steps=2, seed=1, width=32, height=32)
    with pytest.raises(sdlab.InvalidArgument, match="is a folder: give a file name in it"):
        run.save(tmp_path)
    with pytest.raises(sdlab.InvalidArgument, match="longer than this file system allows"):
        run.save(tmp_path / ("a" * 300 + ".png"))
    with pytest.raises(sdlab.WrongType, match="path must be a file path"):
        run.save(None)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(sdlab.InvalidArgument, match="cannot be created"):
        run.save(tmp_path / "file" / "x.png")
    if os.geteuid() != 0:  # (root may write anywhere)
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(sdlab.InvalidArgument, match="cannot be written to"):
            run.save(ro / "x.png")
    target = run.save(tmp_path / "kept.png")
    before = target.read_bytes()
    from PIL import Image

    def full_disk(self, fp, *args, **kwargs):  # the disk fills up halfway through the write
        with open(fp, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(sdlab.InvalidArgument, match="No space left on device.*nothing was written"):
        run.save(target)
    assert target.read_bytes() == before  # the PNG that was there is intact, and no temporary file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "kept.png"] + (["ro"] if os.geteuid() != 0 else [])


def test_helpers_take_one_name_as_one_name_and_refuse_empty_or_degenerate_requests(lab, toy, tmp_path):
    from sdlab import plots

    study = sdlab.sampler_accuracy(lab, "Euler", steps=3, width=32, height=32, reference_steps=4, progress=False)
    assert [r.sampler for r in study.rows] == ["Euler"]  # not 'E', 'u', 'l', ...
    run = lab.generate("x", steps=3, seed=1, width=32, height=32)
    with pytest.raises(sdlab.InvalidArgument, match="steps must be a whole number"):
        plots.step_grid([run], steps=0)
    with pytest.raises(sdlab.InvalidArgument, match="fps"):
        plots.animate_run(run, tmp_path / "a.gif", fps=0)
    with pytest.raises(sdlab.WrongType, match="scheduler must be a diffusers scheduler"):
        sdlab.describe(None)
    with pytest.raises(sdlab.InvalidArgument, match="x and y are both 'cfg'"):
        sdlab.sweep(lab, x="cfg", x_values=[1], y="guidance_scale", y_values=[2])
    # skip_invalid skips a cell of the wrong kind too (a TypeError), not only a ValueError
    grid = sdlab.sweep(lab, x="cfg", x_values=[7.0, "high"], steps=2, width=32, height=32, skip_invalid=True,
                       progress=False)
    assert grid.runs[0][0] is not None and grid.runs[0][1] is None and "cfg must be a number" in grid.errors[0, 1]
    ds = sdlab.toy.dataset(64, 64)
    with pytest.raises(sdlab.InvalidArgument, match="latents are 4x4 latents .* needs 8x8"):
        ds.nearest(ds.latents[0, :, :4, :4])
    with pytest.raises(sdlab.InvalidArgument, match=r"latents must have the shape \(B, 4, h, w\)"):
        lab.decode(run.final_latents[:, :3])


def test_the_studio_checks_its_arguments_and_widens_a_slider_instead_of_clamping(lab, tmp_path):
    with pytest.raises(sdlab.InvalidArgument, match="max_fps"):
        sdlab.Studio(lab, max_fps=0, output_dir=tmp_path)
    with pytest.raises(sdlab.WrongType, match="output_dir"):
        sdlab.Studio(lab, output_dir=None)
    with pytest.raises(sdlab.WrongType, match="cfg must be a number"):
        sdlab.Studio(lab, cfg="high", output_dir=tmp_path)
    studio = sdlab.Studio(lab, steps=300, cfg=35.0, width=32, height=32, output_dir=tmp_path)
    assert studio.steps.value == 300 and studio.cfg.value == 35.0  # shown as they will run
    assert studio.settings.steps == 300 and studio.steps.max >= 300
    studio.close()
    # every problem of a run is shown, not only the last: a prompt and a negative prompt both cut at 77 tokens
    studio = sdlab.Studio(lab, prompt="red " * 100, negative_prompt="blue " * 100, steps=2, width=32, height=32,
                          prompt_syntax="plain", output_dir=tmp_path)
    studio.on_generate()
    _wait_idle(studio)
    assert "The prompt is 302 tokens" in studio.notes.value and "The negative prompt is 402 tokens" in studio.notes.value
    studio.close()


def test_ddim_at_as_many_steps_as_training_timesteps_is_refused_not_an_index_error(toy):
    # DDIM's "leading" spacing with steps_offset 1 would start at timestep 1000 of 0..999 (diffusers then fails
    # with an IndexError mid-run): the plan refuses it, naming the largest count that works
    ddim = sdlab.make_scheduler(toy, "DDIM")
    with pytest.raises(sdlab.InvalidArgument, match="use at most 999 steps") as caught:
        sdlab.plan(ddim, 1000)
    assert caught.value.argument == "steps" and sdlab.plan(ddim, 999).nfe == 999
