"""Property-based tests (hypothesis): whatever a user types, a run either happens or is refused with a
clear sdlab error before any work; whatever text is read as settings, the answer is Settings or a clear
error; whatever order the Studio's buttons are pressed in, it ends idle and consistent."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, event, given, settings as hsettings, strategies as st

import sdlab
from sdlab import sampler_catalog as catalog
from sdlab import noise_schedules as S
from sdlab.generation import BusyError
from sdlab.settings import Settings

FAST = hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

SAMPLER_NAMES = [n for s in catalog.samplers() for n in (s.name, *s.comfy, *s.aliases)] + list(catalog.UNSUPPORTED)
SCHEDULE_NAMES = ["automatic", *S.SCHEDULES, *(st_.a1111 for st_ in S.SCHEDULES.values() if st_.a1111)]


def near_miss(names):
    """A known name, or one spelled the ways people mistype it."""
    base = st.sampled_from(names)
    return st.one_of(
        base,
        base.map(str.upper), base.map(lambda n: n.replace(" ", "_")), base.map(lambda n: n + " "),
        st.tuples(base, st.integers(0, 20)).map(lambda p: p[0][:p[1] % max(len(p[0]), 1)] + p[0][p[1] % max(len(p[0]), 1) + 1:]),
        st.text(max_size=12),
    )


prompts = st.one_of(st.just(""), st.text(max_size=60), st.text(alphabet="!?.,;:()[]{}<>", max_size=30),
                    st.just("a photo of a lighthouse, " * 20), st.text(alphabet="日本語の灯台 émoji🙂", max_size=20))


class CountCalls:
    def __init__(self, lab):
        self.n = 0
        self.handle = lab.pipe.unet.register_forward_pre_hook(self)

    def __call__(self, *args):
        self.n += 1


GOOD = {"steps": st.integers(1, 6), "cfg": st.floats(0, 30), "seed": st.one_of(st.none(), st.integers(0, 2 ** 63 - 1)),
        "width": st.one_of(st.none(), st.sampled_from([8, 16, 32, 48, 64])),
        "height": st.one_of(st.none(), st.sampled_from([8, 16, 32, 48, 64])),
        "batch_size": st.integers(1, 2), "sampler": st.sampled_from(list(catalog.CATALOG)),
        "schedule": st.just("automatic")}
BAD = {"steps": st.one_of(st.integers(-3, 0), st.floats(allow_nan=True), st.text(max_size=3), st.booleans()),
       "cfg": st.one_of(st.floats(-50, -0.01), st.just(float("nan")), st.just(float("inf")), st.text(max_size=3)),
       "seed": st.one_of(st.integers(-10, -1), st.integers(2 ** 63, 2 ** 70), st.text(max_size=3), st.floats(0, 9)),
       "width": st.one_of(st.integers(-16, 7), st.integers(9, 70).filter(lambda v: v % 8), st.just("64")),
       "height": st.one_of(st.integers(-16, 7), st.floats(8, 64)),
       "batch_size": st.one_of(st.integers(-2, 0), st.text(max_size=2)),
       "sampler": near_miss(SAMPLER_NAMES), "schedule": near_miss(SCHEDULE_NAMES)}


@st.composite
def user_settings(draw):
    """Mostly good values, with 0 to 2 fields drawn from what users get wrong (or mistype)."""
    chosen = {k: draw(v) for k, v in GOOD.items()}
    for key in draw(st.lists(st.sampled_from(list(BAD)), max_size=2, unique=True)):
        chosen[key] = draw(BAD[key])
    return chosen


@FAST
@given(prompt=prompts, negative=prompts, chosen=user_settings())
def test_any_settings_run_or_are_refused_before_any_work(tiny, prompt, negative, chosen):
    lab = tiny
    lab.pipe.set_progress_bar_config(disable=True)
    if chosen["width"] is None or chosen["height"] is None:  # the tiny model's native size is small anyway
        chosen = {**chosen, "width": chosen["width"] or 32, "height": chosen["height"] or 32}
    counter = CountCalls(lab)
    try:
        run = lab.generate(prompt, negative_prompt=negative, record=False, **chosen)
    except (ValueError, TypeError) as exc:  # sdlab's own errors: a sentence that says what to do
        message = str(exc)
        assert counter.n == 0, f"refused after {counter.n} UNet calls: {message}"
        assert len(message) > 25 and "invalid literal" not in message and "argument after **" not in message, message
        assert isinstance(exc, sdlab.SdlabError), type(exc)  # sdlab's own, never a raw error from below
        event("refused")
    else:
        event("ran")
        assert run.done and len(run.images) == run.settings.batch_size and counter.n == run.nfe > 0
    finally:
        counter.handle.remove()
    assert not lab._lock.locked()


def test_the_same_seed_still_gives_the_same_image_after_fuzzing(tiny):
    # runs after the fuzz above in this module: nothing it tried left state behind
    a = tiny.generate("a lighthouse", steps=3, seed=5, width=32, height=32)
    b = tiny.generate("a lighthouse", steps=3, seed=5, width=32, height=32)
    assert a.image.tobytes() == b.image.tobytes()


# --- read_settings over generated and mutated infotexts ----------------------------------------------------
KEYS = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Batch size", "Eta", "Model", "RNG",
        "Clip skip", "ENSD", "Schedule rho", "Beta schedule alpha", "Denoising strength", "Hires upscale"]
values = st.one_of(st.integers(-5, 10 ** 6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.sampled_from(SAMPLER_NAMES + SCHEDULE_NAMES + ["512x768", "512", "x", "GPU", "CPU"]),
                   st.text(max_size=15))


@st.composite
def infotexts(draw):
    prompt = draw(prompts)
    lines = [prompt]
    if draw(st.booleans()):
        lines.append("Negative prompt: " + draw(prompts))
    fields = draw(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=0, max_size=8))
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    text = "\n".join(lines)
    cut = draw(st.integers(0, len(text)))  # a mutation: a slice of it, or random junk spliced in
    return draw(st.sampled_from([text, text[:cut], text[:cut] + draw(st.text(max_size=10)) + text[cut:]]))


@hsettings(max_examples=300, deadline=None)
@given(text=infotexts())
def test_read_settings_answers_settings_or_a_clear_error(text):
    try:
        result = sdlab.read_settings(text)
    except ValueError as exc:
        assert len(str(exc)) > 25 and "invalid literal" not in str(exc), str(exc)
    except FileNotFoundError as exc:  # a short string without 'Steps:' or a newline is taken for a path
        assert "no such image" in str(exc)
    else:
        assert isinstance(result, Settings)


@hsettings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_read_settings_of_random_bytes_is_a_clear_error(data):
    with pytest.raises(ValueError, match="cannot read|No generation settings"):
        sdlab.read_settings(b"\x89PNG\r\n\x1a\n" + data if data[:1] == b"\x00" else data)


# --- the Studio under random clicking ---------------------------------------------------------------------
ACTIONS = st.lists(st.sampled_from(["generate", "stop", "restore", "save", "sampler", "wait"]), min_size=1,
                   max_size=8)


@hsettings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(actions=ACTIONS, samplers=st.lists(st.sampled_from(list(catalog.CATALOG)), min_size=8, max_size=8))
def test_studio_actions_in_any_order_end_idle_and_consistent(tiny, tmp_path_factory, actions, samplers):
    tiny.pipe.set_progress_bar_config(disable=True)
    studio = sdlab.Studio(tiny, output_dir=tmp_path_factory.mktemp("out"), steps=4, width=32, height=32)
    for action, sampler in zip(actions, samplers):
        if action == "generate":
            studio.on_generate()
        elif action == "stop":
            studio.on_stop()
        elif action == "restore" and studio.history:
            studio._restore_clicked(studio.history[-1].settings)
        elif action == "save":
            studio.on_save()
        elif action == "sampler":
            studio.picker.sampler.value = sampler  # also while a run is going: the next run uses it
        elif action == "wait":
            studio.idle.wait(30)
    assert studio.idle.wait(60)
    deadline = time.time() + 10
    while studio.job is not None and not studio.job.done and time.time() < deadline:
        time.sleep(0.01)
    assert studio.job is None or studio.job.done
    assert studio.generate_button.disabled is False and studio.stop_button.disabled is True
    assert not tiny._lock.locked()
    assert all(r.done for r in studio.history)
    assert studio.settings.sampler == studio.picker.value[0]
    sdlab.generation.prepare(tiny, studio.settings)  # what the controls hold can run
