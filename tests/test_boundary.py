"""The public API's boundary, held by one generic test rather than a test per reported case.

Every public callable (``sdlab.__all__``, the Lab, Run, Studio, plot and teaching-model functions) is listed
here with one valid call. Hypothesis replaces one argument at a time with a bad value of any kind (None,
flags, huge and negative numbers, NaN and inf, numpy scalars, strings, bytes, lists, dicts, tensors,
functions, objects) and asserts the invariant the README promises:

- whatever leaves the call is an ``sdlab.SdlabError`` whose message names the argument;
- no call runs longer than a bound (a run that would not fit is refused from its estimate at once);
- afterwards the model gives the same image for the same seed as before: nothing was left changed.

A new public function without an entry here fails ``test_every_public_callable_is_walked``. The examples
are derandomised, so the verdict is the same on every run.
"""
from __future__ import annotations

import inspect
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdlab
import sdlab.plots as plots
import sdlab.widgets as widgets
from sdlab import devices
from sdlab.settings import ALIASES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SMALL = dict(steps=2, seed=1, width=32, height=32)
BOUND_S = 20.0  # the slowest valid call drawn here (a 2-step run, a Studio) takes well under a second
# examples per callable: enough to draw every kind of value across its arguments within the suite's time; set
# SDLAB_BOUNDARY_EXAMPLES=200 (say) for a deeper search before a release
EXAMPLES = int(os.environ.get("SDLAB_BOUNDARY_EXAMPLES", "8"))
FREE_BYTES = 2 * 2 ** 30  # the machine the test pretends to be: a run that needs more is refused at once


class _Object:
    """Some object of no kind sdlab knows."""

    def __repr__(self):
        return "<object>"


# Values of every kind. Strategies draw from these and from generic numbers and text.
ODD = [None, True, False, 0, -1, 1, 2 ** 31, 10 ** 12, -(10 ** 12), 2 ** 64, 0.5, -0.5, 1e300, float("nan"),
       float("inf"), -float("inf"), np.float32(np.nan), np.int64(-3), np.float64(1e30), np.bool_(True), "", "x",
       "Euler", "karras", "0", "nan", "../x.png", b"\x00", [], [1], [1, 2, 3], ["x"], {}, {"a": 1}, (),
       np.array([np.nan]), np.zeros((2, 2)), torch.tensor([1.0, 2.0]), torch.zeros(1, 4, 4, 4), _Object(),
       lambda *a, **k: None, float]

BAD = st.one_of(st.sampled_from(ODD), st.integers(-(2 ** 70), 2 ** 70),
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                st.lists(st.integers(-5, 5), max_size=4))


@dataclass
class World:
    """What the calls need, made once: a finished run, a scheduler, a sweep; the models as they are now
    (a call such as sdlab.load(dtype=...) may have replaced the resident handle, as it is documented to)."""

    run: Any
    scheduler: Any
    sweep: Any
    accuracy: Any
    tmp: Any
    reference: np.ndarray = field(repr=False, default=None)

    @property
    def lab(self):
        lab = sdlab.load("tiny")
        lab.pipe.set_progress_bar_config(disable=True)
        return lab

    @property
    def toy(self):
        return sdlab.load("toy")


@dataclass(frozen=True)
class Call:
    name: str
    fn: Callable[..., Any]  # fn(world, **kwargs)
    valid: Callable[[World], dict]  # one valid set of keyword arguments
    cleanup: Callable[[Any], Any] | None = None


def _studio(w, **kw):
    studio = widgets.Studio(**kw)
    studio.close()
    return studio


def _async(w, **kw):
    job = sdlab.generate_async(**kw)
    job.wait(timeout=30)
    return job


def _figure(drawn):
    import matplotlib.pyplot as plt

    plt.close("all")


CALLS = [
    Call("sdlab.generate", lambda w, **k: sdlab.generate(**k),
         lambda w: dict(lab=w.lab, prompt="a red circle", sampler="Euler", schedule="Karras", cfg=7.0,
                        negative_prompt="", batch_size=1, eta=None, preview=None, preview_target="x0",
                        record=True, record_dtype=torch.float16, on_step=None, stop=None, scheduler=None,
                        schedule_params={}, queue=False, prompt_syntax="auto", emphasis="original", clip_skip=1,
                        attention=False, **SMALL)),
    Call("sdlab.generate (A1111 prompt syntax)", lambda w, **k: sdlab.generate(**k),
         lambda w: dict(lab=w.lab, prompt="a (red:1.2) [circle:square:0.5]", negative_prompt="[dark|dim]",
                        prompt_syntax="a1111", emphasis="no_norm", clip_skip=2, **SMALL)),
    Call("sdlab.generate (A1111 noise)", lambda w, **k: sdlab.generate(**k),
         lambda w: dict(lab=w.lab, prompt="x", sampler="Euler a", rng="nv", ensd=31337, subseed=3,
                        subseed_strength=0.5, seed_resize_from=(48, 48), batch_size=2, **SMALL)),
    Call("sdlab.noise", lambda w, **k: sdlab.noise(**k),
         lambda w: dict(seed=1, shape=(1, 4, 8, 8), source="nv", subseed=2, subseed_strength=0.3,
                        seed_resize_from=(32, 32))),
    Call("sdlab.variations", lambda w, **k: sdlab.variations(**k),
         lambda w: dict(lab=w.lab, base=sdlab.Settings(**SMALL), subseed=3, strengths=[0.0, 1.0], seeds=None,
                        records=False, progress=False)),
    Call("sdlab.prompt_schedule", lambda w, **k: sdlab.prompt_schedule(**k),
         lambda w: dict(text="a [red:blue:0.5] circle", steps=20)),
    Call("sdlab.prompt_weights", lambda w, **k: sdlab.prompt_weights(**k), lambda w: dict(text="a (red:1.2) circle")),
    Call("sdlab.generate (diffusers' names)", lambda w, **k: sdlab.generate(**k),
         lambda w: dict(lab=w.lab, prompt="x", guidance_scale=7.0, num_inference_steps=2, num_images_per_prompt=1,
                        seed=1, width=32, height=32)),
    Call("Lab.generate", lambda w, **k: w.lab.generate(**k), lambda w: dict(prompt="x", **SMALL)),
    Call("sdlab.generate_async", _async, lambda w: dict(lab=w.lab, prompt="x", on_done=None, **SMALL)),
    Call("Lab.generate_async", lambda w, **k: w.lab.generate_async(**k).wait(timeout=30), lambda w: dict(prompt="x", **SMALL)),
    Call("sdlab.prepare", lambda w, **k: sdlab.prepare(**k),
         lambda w: dict(lab=w.lab, settings=sdlab.Settings(**SMALL), scheduler=None)),
    Call("sdlab.prepare_settings", lambda w, **k: sdlab.prepare_settings(**k),
         lambda w: dict(lab=w.lab, settings=sdlab.Settings(**SMALL))),
    Call("sdlab.parse_infotext", lambda w, **k: sdlab.parse_infotext(**k),
         lambda w: dict(text='a cat\nNegative prompt: dog\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32')),
    Call("sdlab.read_settings", lambda w, **k: sdlab.read_settings(**k), lambda w: dict(source=w.run.infotext())),
    Call("sdlab.sweep", lambda w, **k: sdlab.sweep(**k),
         lambda w: dict(lab=w.lab, base=sdlab.Settings(**SMALL), x="cfg", x_values=[1.0, 7.0], y=None,
                        y_values=(None,), skip_invalid=False, executor=None, records=False, wait=True,
                        progress=False)),
    Call("Sweep.wait", lambda w, **k: w.sweep.wait(**k), lambda w: dict(timeout=5.0)),
    Call("sdlab.add_noise", lambda w, **k: sdlab.add_noise(**k),
         lambda w: dict(image_or_latents=torch.zeros(1, 4, 4, 4), sigma=1.0, seed=0, lab=None)),
    Call("sdlab.sampler_accuracy", lambda w, **k: sdlab.sampler_accuracy(**k),
         lambda w: dict(lab=w.lab, samplers=["Euler"], schedules=["automatic"], steps=[2], prompt="", negative_prompt="",
                        seed=0, cfg=1.0, width=32, height=32, reference_steps=4, executor=None, progress=False)),
    Call("Accuracy.slope", lambda w, **k: w.accuracy.slope(**k), lambda w: dict(sampler="Euler", schedule="automatic", points=2)),
    Call("sdlab.load", lambda w, **k: sdlab.load(**k),
         lambda w: dict(model="tiny", device="auto", dtype="auto", variant=None, allow_pickle=False, offline=None)),
    Call("sdlab.set_max_resident", lambda w, **k: sdlab.set_max_resident(**k), lambda w: dict(n=sdlab.max_resident())),
    Call("sdlab.unload", lambda w, **k: sdlab.unload(**k), lambda w: dict(which="no-such-model", because="a test")),
    Call("sdlab.config_changes", lambda w, **k: sdlab.config_changes(**k),
         lambda w: dict(scheduler=w.scheduler, reference=w.lab.default_scheduler)),
    Call("sdlab.effective_config", lambda w, **k: sdlab.effective_config(**k),
         lambda w: dict(scheduler=w.scheduler, reference=None)),
    Call("sdlab.describe", lambda w, **k: sdlab.describe(**k), lambda w: dict(scheduler=w.scheduler, reference=None)),
    Call("sdlab.make_scheduler", lambda w, **k: sdlab.make_scheduler(**k),
         lambda w: dict(config_or_scheduler=w.lab, sampler="DPM++ 2M", schedule="Karras", family=None, seed=None)),
    Call("sdlab.plan", lambda w, **k: sdlab.plan(**k), lambda w: dict(scheduler=w.scheduler, steps=5)),
    Call("sdlab.recipe_of", lambda w, **k: sdlab.recipe_of(**k), lambda w: dict(scheduler=w.scheduler)),
    Call("sdlab.Recipe.resolve", lambda w, **k: sdlab.Recipe.resolve(**k),
         lambda w: dict(sampler="Euler", schedule="Karras", family="sd1", params={"rho": 7.0})),
    Call("Recipe.levels", lambda w, **k: sdlab.Recipe.resolve("Euler", "Karras").levels(**k), lambda w: dict(n=5, training=None)),
    Call("sdlab.Recipe.from_config", lambda w, **k: sdlab.Recipe.from_config(**k),
         lambda w: dict(data=sdlab.Recipe.resolve("Euler", "Karras").to_config())),
    Call("sdlab.sigmas", lambda w, **k: sdlab.sigmas(**k),
         lambda w: dict(schedule="karras", n=5, sigma_min=0.03, sigma_max=14.6, model=None, family="sd1", rho=7.0)),
    Call("sdlab.sigmas (a timestep schedule)", lambda w, **k: sdlab.sigmas(**k),
         lambda w: dict(schedule="beta_comfyui", n=5, model=sdlab.TrainingSchedule.stable_diffusion(), alpha=0.6)),
    Call("sdlab.TrainingSchedule.of", lambda w, **k: sdlab.TrainingSchedule.of(**k), lambda w: dict(source=w.lab)),
    Call("sdlab.TrainingSchedule.from_config", lambda w, **k: sdlab.TrainingSchedule.from_config(**k),
         lambda w: dict(config=dict(w.lab.default_scheduler.config))),
    Call("TrainingSchedule.t_to_sigma", lambda w, **k: sdlab.TrainingSchedule.stable_diffusion().t_to_sigma(**k),
         lambda w: dict(t=[0, 999])),
    Call("TrainingSchedule.sigma_to_t", lambda w, **k: sdlab.TrainingSchedule.stable_diffusion().sigma_to_t(**k),
         lambda w: dict(sigma=[0.1, 14.0])),
    Call("Lab.set_sampler", lambda w, **k: w.lab.set_sampler(**k),
         lambda w: dict(sampler="DPM++ 2M", schedule="automatic")),
    Call("Lab.generator", lambda w, **k: w.lab.generator(**k), lambda w: dict(seed=3)),
    Call("Lab.decode", lambda w, **k: w.lab.decode(**k), lambda w: dict(latents=w.run.final_latents)),
    Call("Lab.encode", lambda w, **k: w.lab.encode(**k), lambda w: dict(images=w.run.images[0])),
    Call("Run.save", lambda w, **k: w.run.save(**k), lambda w: dict(path=w.tmp / "run.png")),
    Call("Run.prompt_shown", lambda w, **k: w.run.prompt_shown(**k), lambda w: dict(index=-1)),
    Call("Lab.word_influence", lambda w, **k: w.toy.word_influence(**k),
         lambda w: dict(run=w.toy.generate("a red circle", steps=3, seed=1, width=64, height=64), words=["red"],
                        steps=[2])),
    Call("plots.attention_grid", lambda w, **k: _figure(plots.attention_grid(**k)),
         lambda w: dict(run=w.lab.generate("a red circle", attention=True, **SMALL), words=None, steps=2, cell=1.0)),
    Call("plots.influence_grid", lambda w, **k: _figure(plots.influence_grid(**k)),
         lambda w: dict(influence=w.toy.word_influence(w.toy.generate("a red circle", steps=3, seed=1, width=64,
                                                                        height=64), ["red"], [2]),
                        run=None, cell=1.0)),
    Call("Run.prompt_changes", lambda w, **k: w.run.prompt_changes(**k), lambda w: dict()),
    Call("Denoiser", lambda w, **k: sdlab.Denoiser(**k), lambda w: dict(lab=w.lab, prompt="a cat", negative_prompt="",
                                                                       cfg=7.0, emphasis="original", clip_skip=1,
                                                                       step=1, steps=20)),
    Call("Denoiser (A1111 prompt)", lambda w, **k: sdlab.Denoiser(**k),
         lambda w: dict(lab=w.lab, prompt="a [cat|dog] (sat:1.2)", negative_prompt="[dark::3]", cfg=7.0,
                        emphasis="no_norm", clip_skip=2, step=4, steps=20)),
    Call("Denoiser.__call__", lambda w, **k: sdlab.Denoiser(w.lab, "a cat")(**k),
         lambda w: dict(x=torch.zeros(1, 4, 4, 4), sigma=1.0)),
    Call("StepRecord.view", lambda w, **k: w.run.records[-1].view(**k), lambda w: dict(target="x0")),
    Call("StepRecord.picture", lambda w, **k: w.run.records[-1].picture(**k), lambda w: dict(target="x0", vae=None)),
    Call("Job.wait", lambda w, **k: w.lab.generate_async("x", **SMALL).wait(**k), lambda w: dict(timeout=30.0)),
    Call("sdlab.Studio", _studio,
         lambda w: dict(lab=w.lab, settings=None, max_fps=20.0, preview="approx", preview_target="x0",
                        output_dir=w.tmp, steps=2, width=32, height=32, cfg=7.0, sampler="Euler", seed=1)),
    Call("Studio.restore", lambda w, **k: _restore(w, **k), lambda w: dict(settings=sdlab.Settings(**SMALL))),
    Call("sdlab.StepViewer", lambda w, **k: widgets.StepViewer(**k).close(), lambda w: dict(run=w.run, size=64, lab=w.lab)),
    Call("sdlab.SamplerPicker", lambda w, **k: widgets.SamplerPicker(**k), lambda w: dict(sampler="Euler", schedule="Karras")),
    Call("sdlab.ScheduleExplorer", lambda w, **k: widgets.ScheduleExplorer(**k),
         lambda w: dict(model=None, names=("uniform", "karras"), n=10, rho=7.0), cleanup=_figure),
    Call("plots.plot_schedules", lambda w, **k: plots.plot_schedules(**k),
         lambda w: dict(names=["karras", "uniform"], n=10, model=None, y="sigma", x="step", include_final=None, ax=None),
         cleanup=_figure),
    Call("plots.plot_step_allocation", lambda w, **k: plots.plot_step_allocation(**k),
         lambda w: dict(names=["karras"], n=10, model=None, ax=None), cleanup=_figure),
    Call("plots.plot_plan", lambda w, **k: plots.plot_plan(**k),
         lambda w: dict(scheduler=w.scheduler, n=5, formula=True, model=None, y="sigma", ax=None, label=None), cleanup=_figure),
    Call("plots.plot_run", lambda w, **k: plots.plot_run(**k), lambda w: dict(run=w.run, axes=None), cleanup=_figure),
    Call("plots.step_grid", lambda w, **k: plots.step_grid(**k),
         lambda w: dict(runs=[w.run], steps=2, target="x0", labels=None, vae=None, cell=1.0), cleanup=_figure),
    Call("plots.xy_plot", lambda w, **k: plots.xy_plot(**k), lambda w: dict(result=w.sweep, cell=1.0, vae=None, target="image"),
         cleanup=_figure),
    Call("plots.cfg_sweep", lambda w, **k: plots.cfg_sweep(**k),
         lambda w: dict(lab=w.lab, scales=[1.0, 7.0], y=None, y_values=(None,), **SMALL), cleanup=_figure),
    Call("plots.plot_accuracy", lambda w, **k: plots.plot_accuracy(**k), lambda w: dict(result=w.accuracy, ax=None),
         cleanup=_figure),
    Call("plots.pick_steps", lambda w, **k: plots.pick_steps(**k), lambda w: dict(n=10, count=4)),
    Call("plots.animate_run", lambda w, **k: plots.animate_run(**k),
         lambda w: dict(run=w.run, path=w.tmp / "run.gif", target="x0", fps=6, size=32, vae=None)),
    Call("plots.png_bytes", lambda w, **k: plots.png_bytes(**k), lambda w: dict(figure=_a_figure(), dpi=20), cleanup=_figure),
    Call("plots.show", lambda w, **k: plots.show(**k), lambda w: dict(figure=_a_figure()), cleanup=_figure),
    Call("plots.presentation", lambda w, **k: plots.presentation(**k).__exit__(), lambda w: dict(scale=1.5)),
    Call("plots.presentation_scale", lambda w, **k: plots.presentation_scale(**k), lambda w: dict()),
    Call("toy.dataset", lambda w, **k: sdlab.toy.dataset(**k), lambda w: dict(width=64, height=64)),
    Call("toy.Dataset.nearest", lambda w, **k: sdlab.toy.dataset(64, 64).nearest(**k),
         lambda w: dict(latents=sdlab.toy.dataset(64, 64).latents[:1])),
    Call("toy.Dataset.find", lambda w, **k: sdlab.toy.dataset(64, 64).find(**k), lambda w: dict(color="red")),
    Call("toy.unknown_words", lambda w, **k: sdlab.toy.unknown_words(**k), lambda w: dict(text="a red fox")),
    Call("toy.allowed_for", lambda w, **k: sdlab.toy.allowed_for(**k), lambda w: dict(text="a red circle")),
    Call("toy.is_teaching_model", lambda w, **k: sdlab.toy.is_teaching_model(**k), lambda w: dict(obj=w.toy)),
    Call("toy.build_toy_pipeline", lambda w, **k: sdlab.toy.build_toy_pipeline(**k),
         lambda w: dict(dtype=None, prediction_type="epsilon")),
]

# Public callables that take no argument, or are data: nothing to walk. Each with the reason.
NOT_WALKED = {
    "samplers": "takes no argument", "schedules": "takes no argument", "loaded": "takes no argument",
    "max_resident": "takes no argument", "toy.describe": "takes no argument", "toy.vocabulary": "takes no argument",
    "toy.attributes": "takes no argument",
    # data: plain records that sdlab checks where they are used (prepare, generate, the Studio), not when built
    "Settings": "data, checked by prepare", "RunOptions": "data, checked by generate", "Run": "a result",
    "StepEvent": "a result", "StepRecord": "a result", "Prepared": "made by prepare", "Plan": "made by plan",
    "Sampler": "catalog data", "Sweep": "made by sweep", "Accuracy": "made by sampler_accuracy",
    "Job": "made by generate_async", "Lab": "made by load", "Recipe": "made by Recipe.resolve",
    "TrainingSchedule": "made by its classmethods", "toy": "a module", "DEFAULT_MODEL": "a constant",
    "__version__": "a constant", "toy.Dataset": "made by toy.dataset", "plots.Drawn": "a result", "plots.Presentation": "a result", "plots.Animation": "a result (a Path)",
    # sdlab's scheduler classes are diffusers schedulers: diffusers' own constructor checks hold them
    **{name: "a diffusers scheduler class" for name in sdlab.__all__ if name.startswith("Sdlab")},
}


def _restore(w, **kw):
    studio = widgets.Studio(w.lab, output_dir=w.tmp, steps=2, width=32, height=32)
    try:
        return studio.restore(**kw)
    finally:
        studio.close()


def _a_figure():
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(1, 1))


def _public_names() -> set[str]:
    """Every public callable: sdlab's names (the lazily loaded widgets too), the teaching model's, the plots'."""
    def callables(module, names, prefix=""):
        return {prefix + n for n in names if callable(getattr(module, n)) and not (
            inspect.isclass(getattr(module, n)) and issubclass(getattr(module, n), BaseException))}

    names = callables(sdlab, [*sdlab.__all__, "Studio", "StepViewer", "SamplerPicker", "ScheduleExplorer"])
    names |= callables(sdlab.toy, sdlab.toy.__all__, "toy.")
    names |= callables(plots, [n for n in dir(plots) if not n.startswith("_")
                               and getattr(getattr(plots, n), "__module__", "") == "sdlab.plots"], "plots.")
    return names


def test_every_public_callable_is_walked():
    walked = {c.name.split(" (")[0] for c in CALLS}
    walked |= {c.name.split(" (")[0].replace("sdlab.", "") for c in CALLS}
    missing = {n for n in _public_names() if n not in walked and n not in NOT_WALKED
               and "sdlab." + n not in walked}
    assert not missing, f"public callables with no entry in CALLS or NOT_WALKED: {sorted(missing)}"
    for cls, prefix in ((sdlab.Lab, "Lab"), (sdlab.Run, "Run"), (sdlab.StepRecord, "StepRecord"),
                        (widgets.Studio, "Studio")):
        for name, member in vars(cls).items():
            if name.startswith("_") or not callable(member) or name.startswith("on_") or name in ("show", "infotext", "close"):
                continue
            assert f"{prefix}.{name}" in walked, f"{prefix}.{name} has no entry in CALLS"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    lab = sdlab.load("tiny")
    lab.pipe.set_progress_bar_config(disable=True)
    toy = sdlab.load("toy")
    run = lab.generate("a red circle", **SMALL)
    sweep = sdlab.sweep(lab, sdlab.Settings(**SMALL), x="cfg", x_values=[1.0, 7.0], progress=False, records=True)
    accuracy = sdlab.sampler_accuracy(lab, ["Euler"], steps=[2, 3], width=32, height=32, reference_steps=4,
                                      progress=False)
    scheduler = sdlab.make_scheduler(lab, "Euler", "Karras")
    w = World(run=run, scheduler=scheduler, sweep=sweep, accuracy=accuracy,
              tmp=tmp_path_factory.mktemp("boundary"))
    w.reference = np.asarray(lab.generate("a red circle", **SMALL, record=False).images[0])
    return w


def _names_it(exc: BaseException, key: str) -> bool:
    text = str(exc)
    return any(name in text for name in {key, ALIASES.get(key, key), key.replace("_", " ")})


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _call(world: World, call: Call, key: str, value: Any) -> str | None:
    """Make the call with ``key`` replaced by ``value``; what broke the invariant, or None."""
    kwargs = call.valid(world)
    kwargs[key] = value
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call.fn(world, **kwargs)
            if call.cleanup is not None:
                call.cleanup(out)
    except sdlab.SdlabError as exc:
        if not _names_it(exc, key):
            return f"{call.name}({key}={_short(value)}): the message does not name {key!r}: {exc}"
    except TypeError as exc:
        if key == "no_such_argument" and "unexpected keyword argument 'no_such_argument'" in str(exc):
            return None  # Python's own check of a signature without **kwargs: it names the argument
        return f"{call.name}({key}={_short(value)}) raised {type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 (the point: nothing else may leave)
        return f"{call.name}({key}={_short(value)}) raised {type(exc).__name__}: {exc}"
    finally:
        if call.cleanup is not None:
            call.cleanup(None)
        _idle(world)  # a call that started something in the background (a sweep, a job) has ended it
    seconds = time.monotonic() - start
    if seconds > BOUND_S:
        return f"{call.name}({key}={_short(value)}) took {seconds:.1f} s"
    return None


def _idle(world: World) -> None:
    from sdlab import models

    for lab in list(models._RESIDENT.values()):
        assert lab._lock.acquire(timeout=BOUND_S), "a run started by a call was still going"
        lab._lock.release()


def _same_image(world: World) -> None:
    world.lab.set_sampler("DPM++ 2M")
    image = np.asarray(world.lab.generate("a red circle", **SMALL, record=False).images[0])
    assert np.array_equal(image, world.reference), "a same-seed run after the bad calls gave another image"


@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
def test_bad_values_get_an_sdlab_error_that_names_them(world, call, monkeypatch):
    monkeypatch.setattr(devices, "free_memory_bytes", lambda device: FREE_BYTES)
    keys = sorted(call.valid(world)) + ["no_such_argument"]
    problems: list[str] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(key=st.sampled_from(keys), value=BAD)
    def walk(key, value):
        problem = _call(world, call, key, value)
        if problem:
            problems.append(problem)

    walk()
    # every argument at least once, with the values most often wrong
    for key in keys:
        for value in (None, "x", float("nan")):
            problem = _call(world, call, key, value)
            if problem:
                problems.append(problem)
    _same_image(world)
    if problems and os.environ.get("SDLAB_BOUNDARY_LOG"):  # the whole list, for whoever fixes them
        with open(os.environ["SDLAB_BOUNDARY_LOG"], "a") as log:
            log.writelines(p.replace("\n", " ")[:300] + "\n" for p in dict.fromkeys(problems))
    assert not problems, "\n".join(dict.fromkeys(problems))
