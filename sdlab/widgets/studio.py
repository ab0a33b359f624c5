"""The Studio: one cell, ``sdlab.Studio(lab)``, and a working image lab appears.

State lives in ``studio.settings`` (a core :class:`Settings`); the controls observe and write it.
Generation runs in the core's worker thread (``generate_async``); from there the Studio only assigns
widget trait values (JPEG bytes, text), never Output contexts. Frames are throttled to ``max_fps``;
a frame that comes too soon is held as *the* pending one and replaced by newer ones, so only the
latest is ever sent when frames come faster than the browser should take them.
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import replace
from pathlib import Path

import ipywidgets as W

from .. import checks
from ..errors import WrongType
from ..generation import Job, native_size, prepare
from ..previews import to_jpeg
from ..records import Run, StepEvent
from ..settings import Settings
from ..toy import is_teaching_model
from .controls import SamplerPicker
from .viewer import StepViewer

PREVIEWS = [("approx (fast)", "approx"), ("TAESD", "taesd"), ("full VAE", "vae"), ("off", "off")]
HISTORY_LIMIT = 24


class Studio(W.VBox):
    """Prompt, negative prompt, CFG, sampler, schedule, steps, seed, size and preview controls;
    Generate and Stop; a live viewer with latent channels; step scrubbing; history; saving."""

    def __init__(self, lab, settings: Settings | None = None, *, max_fps: float = 20.0, preview: str = "approx",
                 preview_target: str = "x0", output_dir: str | Path = "outputs", **setting_kwargs):
        self.lab = checks.lab("lab", lab)
        if settings is not None and not isinstance(settings, Settings):
            raise WrongType(f"settings must be sdlab.Settings (or None), not {type(settings).__name__}.",
                            argument="settings")
        base = settings or Settings(width=None, height=None)
        self.settings = base.updated(**setting_kwargs)
        size = native_size(lab)
        self.max_fps = checks.number("max_fps", max_fps, low=0, low_open=True, high=1000,
                                     hint=" It is how many preview frames a second the Studio sends at most.")
        checks.choice("preview", preview, [value for _, value in PREVIEWS])
        checks.choice("preview_target", preview_target, ("x0", "xt"))
        if not isinstance(output_dir, (str, Path)) or not str(output_dir):
            raise WrongType(f"output_dir must be a folder (a string or pathlib.Path) to save PNGs in, not "
                            f"{output_dir!r:.60}.", argument="output_dir")
        # checked as a run would check them, before any control is built (a control would clamp a value the
        # run then uses anyway, or raise a traitlets error that says nothing about the setting)
        given = self.settings
        checked = prepare(lab, replace(given, width=size if given.width is None else given.width,
                                       height=size if given.height is None else given.height)).settings
        self.job: Job | None = None
        self.history: list[Run] = []  # the last HISTORY_LIMIT runs
        self._made = 0  # runs added to the history in this session
        self._numbers: dict[int, int] = {}  # id(run) -> its number in the session (1, 2, ...), for runs in history
        self._thumbs: list[W.Widget] = []  # one per run in history, built once
        self.shown: Run | None = None
        self.last_error: BaseException | None = None
        self.idle = threading.Event()
        self.idle.set()
        self._pending: StepEvent | None = None
        self._latest: StepEvent | None = None
        self._last_frame = 0.0
        self._t_start = 0.0
        self._ticket = 0  # which on_generate the UI belongs to
        s = self.settings

        wide = W.Layout(width="98%")
        self.prompt = W.Textarea(value=s.prompt, placeholder="Prompt", description="Prompt", layout=wide, rows=2)
        self.negative = W.Textarea(value=s.negative_prompt, placeholder="Negative prompt", description="Negative",
                                   layout=wide, rows=1)
        self.picker = SamplerPicker(s.sampler, s.schedule)
        self.steps = W.IntSlider(value=checked.steps, min=1, max=max(150, checked.steps), description="Steps")
        self.cfg = W.FloatSlider(value=checked.cfg, min=0.0, max=max(20.0, checked.cfg), step=0.5,
                                 description="CFG scale")
        self.seed_mode = W.ToggleButtons(options=["random", "fixed"], value="random" if s.seed is None else "fixed",
                                         style={"button_width": "80px"}, description="Seed")
        self.seed = W.IntText(value=checked.seed if s.seed is not None else 0, layout=W.Layout(width="140px"))
        self.reuse = W.Button(description="reuse last", icon="recycle", layout=W.Layout(width="110px"),
                              tooltip="Fix the seed of the last run")
        self.width = W.IntText(value=checked.width, description="Width", layout=W.Layout(width="170px"))
        self.height = W.IntText(value=checked.height, description="Height", layout=W.Layout(width="170px"))
        self.preview = W.Dropdown(options=PREVIEWS, value=preview, description="Preview", layout=W.Layout(width="220px"))
        self.target = W.ToggleButtons(options=[("x0", "x0"), ("x_t", "xt")], value=preview_target,
                                      style={"button_width": "50px"})
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.progress = W.HTML(value="ready")
        self.error = W.HTML(value="")
        self.viewer = StepViewer(lab=lab)
        self.history_box = W.HBox(layout=W.Layout(overflow="auto", width="98%"))
        self.save_dir = W.Text(value=str(output_dir), description="Save to", layout=W.Layout(width="360px"))
        self.save_button = W.Button(description="Save PNG", icon="save", disabled=True)
        self.save_status = W.HTML()
        # stable class names for styling and for the browser test
        self.progress.add_class("sdlab-progress")
        self.error.add_class("sdlab-error")
        self.viewer.panel.image.add_class("sdlab-image")
        note = W.HTML(_model_note(lab))

        for widget, name in ((self.prompt, "prompt"), (self.negative, "negative_prompt"), (self.steps, "steps"),
                             (self.cfg, "cfg"), (self.width, "width"), (self.height, "height"),
                             (self.picker.sampler, "sampler"), (self.picker.schedule, "schedule")):
            widget.observe(self._writer(name), names="value")
        self.seed.observe(lambda _: self._sync_seed(), names="value")
        self.seed_mode.observe(lambda _: self._sync_seed(), names="value")
        self.reuse.on_click(self._on_reuse)
        self.generate_button.on_click(self.on_generate)
        self.stop_button.on_click(self.on_stop)
        self.save_button.on_click(self.on_save)

        super().__init__([
            note, self.prompt, self.negative,
            W.HBox([self.picker, self.steps]),
            W.HBox([self.cfg, self.seed_mode, self.seed, self.reuse]),
            W.HBox([self.width, self.height, self.preview, self.target]),
            W.HBox([self.generate_button, self.stop_button, self.progress]),
            self.error, self.viewer,
            W.HTML("<b>History</b> (this session)"), self.history_box,
            W.HBox([self.save_dir, self.save_button, self.save_status]),
        ])

    # -- settings, the truth ---------------------------------------------------------------------
    def _writer(self, name: str):
        def write(change):
            self.settings = replace(self.settings, **{name: change["new"]})
        return write

    def _sync_seed(self) -> None:
        self.settings = replace(self.settings, seed=None if self.seed_mode.value == "random" else int(self.seed.value))

    def _on_reuse(self, _=None) -> None:
        if self.history:
            self.seed.value = self.history[-1].settings.seed
            self.seed_mode.value = "fixed"

    def restore(self, settings: Settings) -> list[str]:
        """Put settings back into the controls (and so into ``self.settings``): a run's, or what
        ``sdlab.read_settings`` read from a PNG or an infotext. Settings that cannot run are refused with
        the reason and nothing changes. Returns (and shows) what had to be adapted: a missing size becomes
        the model's native one, and a slider whose range cannot hold a value (steps 300, CFG 35) is widened
        to hold it, never clamped."""
        if not isinstance(settings, Settings):
            raise WrongType("settings must be sdlab.Settings (run.settings, or sdlab.read_settings(png or infotext)), "
                            f"not {type(settings).__name__}.", argument="settings")
        said: list[str] = []
        native = native_size(self.lab)
        width = native if settings.width is None else settings.width
        height = native if settings.height is None else settings.height
        if settings.width is None or settings.height is None:
            said.append(f"No size in these settings: using the model's native {width}x{height}.")
        # everything checked before any control changes (the core's check: names, size, steps, cfg, ...)
        checked = prepare(self.lab, replace(settings, width=width, height=height)).settings
        for slider, value, label in ((self.steps, checked.steps, "Steps"), (self.cfg, checked.cfg, "CFG scale")):
            if value > slider.max:
                slider.max = value
                said.append(f"{label} {value:g} is beyond the slider's range: its range now goes up to {value:g}.")
            elif value < slider.min:
                slider.min = value
                said.append(f"{label} {value:g} is below the slider's range: its range now starts at {value:g}.")
        self.prompt.value, self.negative.value = settings.prompt, settings.negative_prompt
        self.picker.value = (checked.sampler, settings.schedule if settings.schedule == "automatic" else checked.schedule)
        self.steps.value, self.cfg.value = checked.steps, checked.cfg
        self.width.value, self.height.value = width, height
        if settings.seed is not None:
            self.seed.value = settings.seed
            self.seed_mode.value = "fixed"
        else:
            self.seed_mode.value = "random"
        # the rest travels as it is: schedule parameters, eta, batch, a custom scheduler, where it came from
        self.settings = replace(settings, sampler=self.picker.value[0], schedule=self.picker.value[1],
                                steps=checked.steps, cfg=checked.cfg, width=width, height=height,
                                seed=self.settings.seed)
        self._show_error("\n".join(said) if said else None)
        return said

    def _restore_clicked(self, settings: Settings) -> None:
        try:
            self.restore(settings)
        except Exception as exc:  # said in the UI; the controls keep what they had
            self._show_error(exc)

    # -- actions ---------------------------------------------------------------------------------
    def on_generate(self, _=None) -> None:
        if self.job is not None and not self.job.done:
            self._show_error("A run is already going. Press Stop, or wait for it to finish.")
            return
        self._show_error(None)
        preview = None if self.preview.value == "off" else self.preview.value
        self._pending = self._latest = None
        self._t_start = time.perf_counter()
        self.idle.clear()
        try:
            # numbered before it starts: a fast run can end (and call on_done) before self.job is assigned
            self._ticket += 1
            ticket = self._ticket
            self.job = self.lab.generate_async(self.settings, preview=preview, preview_target=self.target.value,
                                               preview_channels=True, on_step=self._on_step,
                                               on_done=lambda job: self._on_done(job, ticket))
        except Exception as exc:  # bad settings: said in the UI, nothing started
            self.idle.set()
            self._show_error(exc)
            return
        self.generate_button.disabled = True
        self.stop_button.disabled = False
        self.viewer.info.value = "<i>generating...</i>"
        self.progress.value = f"starting: {html.escape(self.job.run.settings.sampler)}, seed {self.job.run.settings.seed}"

    def on_stop(self, _=None) -> None:
        if self.job is not None and not self.job.done:
            self.job.stop()
            self.progress.value += " &middot; stopping..."

    def on_save(self, _=None) -> None:
        run = self.shown
        if run is None:
            self.save_status.value = "Nothing to save yet."
            return
        index = self._numbers.get(id(run), 0)  # its number in the session: unique, whatever the history drops
        try:
            path = run.save(Path(self.save_dir.value).expanduser() / f"sdlab-{index:04d}-{run.settings.seed}.png")
        except Exception as exc:
            self.save_status.value = f"<span style='color:#b00'>Could not save: {html.escape(str(exc))}</span>"
            return
        self.save_status.value = f"saved {html.escape(str(path))}"

    # -- from the worker thread: trait assignments only -------------------------------------------
    def _on_step(self, event: StepEvent) -> None:
        self._latest = event
        if event.preview is not None:
            self._pending = event
        now = time.perf_counter()
        if now - self._last_frame >= 1.0 / self.max_fps:
            self._flush(now)

    def _flush(self, now: float | None = None) -> None:
        event, self._pending = self._pending, None
        if event is not None:
            self.viewer.panel.show(event.preview, event.channels)
        if self._latest is not None:
            self.progress.value = _progress(self._latest, time.perf_counter() - self._t_start)
        self._last_frame = now or time.perf_counter()

    def _on_done(self, job: Job, ticket: int | None = None) -> None:
        if ticket is not None and ticket != self._ticket:  # a run this Studio no longer shows: leave the UI
            return
        try:
            self._flush()
            if job.error is not None:
                self._show_error(job.error)
                self.progress.value = "failed"
                if job.run is not None and job.run.records:
                    self.viewer.show_run(job.run)
                return
            run = job.wait()
            self._add_history(run)
            self.show(run)
            state = "stopped" if run.stopped else "done"
            self.progress.value = (f"{state}: step {run.records[-1].step}/{run.settings.steps} &middot; NFE {run.nfe} "
                                   f"&middot; {run.seconds:.1f} s &middot; seed {run.settings.seed}")
            if run.problems:  # every one of them, not only the last
                self._show_error("\n".join(run.problems))
        finally:
            self.generate_button.disabled = False
            self.stop_button.disabled = True
            self.idle.set()

    def _show_error(self, error) -> None:
        if error is None:
            self.error.value = ""
            return
        if isinstance(error, BaseException):
            self.last_error = error
            text = f"{type(error).__name__}: {error}"
        else:
            text = str(error)
        self.error.value = f"<div style='color:#b00;white-space:pre-wrap'>{html.escape(text)}</div>"

    # -- history ---------------------------------------------------------------------------------
    def show(self, run: Run) -> None:
        self.shown = run
        self.viewer.show_run(run)
        if run.image is not None:
            import numpy as np

            self.viewer.panel.image.value = to_jpeg(np.asarray(run.image.convert("RGB")))
        self.save_button.disabled = run.image is None

    def _add_history(self, run: Run) -> None:
        """One new thumbnail per run; a run that falls off the history has its widgets closed (in the kernel
        and in the page), so a long session holds HISTORY_LIMIT thumbnails, not one per run ever made."""
        self._made += 1
        self._numbers[id(run)] = self._made
        self.history.append(run)
        self._thumbs.append(self._thumb(run, self._made))
        dropped = self._thumbs[:-HISTORY_LIMIT]
        for old in self.history[:-HISTORY_LIMIT]:
            self._numbers.pop(id(old), None)
        del self.history[:-HISTORY_LIMIT], self._thumbs[:-HISTORY_LIMIT]
        self.history_box.children = tuple(self._thumbs)
        for box in dropped:
            _close_all(box)

    def _thumb(self, run: Run, number: int) -> W.Widget:
        import numpy as np

        s = run.settings
        img = W.Image(value=to_jpeg(np.asarray(run.image.convert("RGB")), max_side=96) if run.image else b"",
                      format="jpeg", layout=W.Layout(width="96px", height="96px", object_fit="contain"))
        show = W.Button(description=f"#{number} show", layout=W.Layout(width="96px"))
        restore = W.Button(description="restore", layout=W.Layout(width="96px"),
                           tooltip="Put this run's settings back into the controls")
        show.on_click(lambda _: self.show(run))
        restore.on_click(lambda _: self._restore_clicked(run.settings))
        label = W.HTML(f"<small>{html.escape(s.sampler)}<br>{s.steps} steps, cfg {s.cfg:g}<br>seed {s.seed}"
                       f"{' (stopped)' if run.stopped else ''}</small>")
        return W.VBox([img, label, show, restore], layout=W.Layout(margin="0 6px 0 0"))


def _close_all(widget: W.Widget) -> None:
    """Close a widget and everything it holds: its children, and the Layout and Style widgets each one has
    (closing a widget alone leaves those live in the kernel and the page)."""
    for child in getattr(widget, "children", ()):
        _close_all(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, W.Widget):
            part.close()
    widget.close()


def _model_note(lab) -> str:
    if getattr(lab, "is_tiny", False):
        return "<b>Built-in tiny model</b>: random weights, so images are noise. Load a real model for pictures."
    if is_teaching_model(lab):
        from ..toy.data import vocabulary

        return ("<b>Built-in teaching model</b>: an exact denoiser that can only draw its own pictures (shapes, "
                f"colours, positions, sizes). Words it knows: <i>{html.escape(', '.join(vocabulary()))}</i>.")
    return ""


def _progress(event: StepEvent, elapsed: float) -> str:
    r = event.record
    rate = r.step / elapsed if elapsed > 0 else 0.0
    eta = (r.total_steps - r.step) / rate if rate > 0 else float("nan")
    return f"step {r.step}/{r.total_steps} &middot; NFE {r.nfe} &middot; {rate:.1f} it/s &middot; ETA {eta:.0f} s"
