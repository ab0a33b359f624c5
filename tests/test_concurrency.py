"""One lock per model: whatever another thread calls on a Lab during a run, the run gives the image it gives
alone, and nothing raises anything but BusyError (what changes the model waits for the run or is refused).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import sdlab
import sdlab.widgets as widgets
from sdlab import BusyError

RUN = dict(prompt="a red circle", steps=12, seed=3, width=32, height=32)


def _calls(lab, tmp_path, run):
    """Every public thing that can be done to a model, as (name, call)."""
    latents = run.final_latents

    def studio():
        s = widgets.Studio(lab, output_dir=tmp_path, steps=2, width=32, height=32)
        s.on_generate()  # refused in the UI while the other run goes on, or runs after it
        s.idle.wait(30)
        s.close()

    return [
        ("set_sampler", lambda: lab.set_sampler("Euler a")),
        ("generate", lambda: lab.generate("x", steps=1, seed=1, width=32, height=32)),
        ("generate_async", lambda: lab.generate_async("x", steps=1, seed=1, width=32, height=32).wait(30)),
        ("generator", lambda: lab.generator(5)),
        ("decode", lambda: lab.decode(latents)),
        ("encode", lambda: lab.encode(run.images[0])),
        ("make_scheduler", lambda: sdlab.make_scheduler(lab, "DPM++ 2M", "Karras")),
        ("prepare", lambda: sdlab.prepare(lab, sdlab.Settings(prompt="x", steps=3, width=32, height=32))),
        ("plan", lambda: sdlab.plan(lab.pipe.scheduler, 5)),
        ("recipe_of", lambda: sdlab.recipe_of(lab.pipe.scheduler)),
        ("training schedule", lambda: sdlab.TrainingSchedule.of(lab)),
        ("load (the same model)", lambda: sdlab.load("tiny")),
        ("unload this model", lambda: sdlab.unload(lab)),
        ("unload all", lambda: sdlab.unload()),
        ("Studio", studio),
        ("describe", lambda: sdlab.describe(lab.pipe.scheduler, lab.default_scheduler)),
    ]


def _queued(lab):
    """Calls that wait for the run going on and then run: they must all come back done."""
    return [
        ("generate(queue=True)", lambda: lab.generate("x", steps=1, seed=1, width=32, height=32, queue=True)),
        ("sweep", lambda: sdlab.sweep(lab, sdlab.Settings(steps=1, width=32, height=32), x="cfg", x_values=[1.0],
                                      progress=False)),
    ]


def _hammer(calls, until: threading.Event, outcomes: dict):
    """Call everything, over and over, until ``until`` is set; record what each call ended in."""
    while not until.is_set():
        for name, call in calls:
            try:
                call()
                outcome = "ok"
            except BusyError:
                outcome = "busy"
            except BaseException as exc:  # noqa: BLE001 (the point: nothing else may come out)
                outcome = f"{type(exc).__name__}: {exc}"
            outcomes.setdefault(name, set()).add(outcome)


@pytest.mark.parametrize("while_", ["computing", "in on_step"])
def test_every_lab_call_from_another_thread_during_a_run(lab, tmp_path, while_):
    installed = lab.set_sampler("DPM++ 2M")
    alone = lab.generate(**RUN, record=False)
    calls = _calls(lab, tmp_path, alone)
    started, ended, outcomes = threading.Event(), threading.Event(), {}

    last = None

    def on_step(event):
        started.set()
        if while_ == "in on_step" and event.record.index == 3:
            # the run waits inside its callback while the other thread does everything once
            deadline = time.monotonic() + 60
            while not outcomes.keys() >= {n for n, _ in calls} and time.monotonic() < deadline:
                time.sleep(0.01)
        elif event.record.index == last:
            # the run's last call: the other thread stops, and is waited for while the run still holds the model,
            # so that every call it made landed during the run
            ended.set()
            thread.join(120)
        else:
            time.sleep(0.005)  # a run long enough for the other thread to land calls in every step

    def other():
        started.wait(30)
        _hammer(calls, ended, outcomes)

    queued = {}

    def wait_turn(name, call):
        try:
            call()
            queued[name] = "ok"
        except BaseException as exc:  # noqa: BLE001
            queued[name] = f"{type(exc).__name__}: {exc}"

    last = sdlab.plan(installed, RUN["steps"]).nfe - 1
    thread = threading.Thread(target=other)
    thread.start()
    waiting = [threading.Thread(target=wait_turn, args=item) for item in _queued(lab)]
    started_waiting = threading.Thread(target=lambda: (started.wait(30), [t.start() for t in waiting]))
    started_waiting.start()
    try:
        run = lab.generate(**RUN, record=False, on_step=on_step)
    finally:
        ended.set()
        thread.join(120)
        started_waiting.join(60)
        for t in waiting:
            t.join(120)
    assert not thread.is_alive()
    assert np.array_equal(np.asarray(run.images[0]), np.asarray(alone.images[0])), "the run changed under the calls"
    assert queued == {name: "ok" for name, _ in _queued(lab)}, queued
    raw = {name: sorted(o for o in got if o not in ("ok", "busy")) for name, got in outcomes.items()}
    assert not any(raw.values()), f"calls that raised something else than BusyError: {raw}"
    # what would change the model mid-run was refused at least once (the calls all landed during the run)
    for name in ("set_sampler", "generate", "generate_async", "unload this model", "unload all"):
        assert "busy" in outcomes[name], (name, outcomes[name])
    # after the run: the model is still resident and still runs what the user installed
    assert lab.is_loaded and lab.pipe.scheduler is installed
    again = lab.generate(**RUN, record=False)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(alone.images[0]))
