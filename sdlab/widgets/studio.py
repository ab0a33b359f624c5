"""The Studio: one cell, ``sdlab.Studio(lab)``, and a working image lab appears.

State lives in ``studio.settings`` (a core :class:`Settings`); the controls observe and write it.
Generation runs in the core's worker thread (``generate_async``); from there the Studio only assigns
widget trait values (JPEG bytes, text), never Output contexts. Frames are throttled to ``max_fps``;
a frame that comes too soon is held as *the* pending one and replaced by newer ones, so only the
latest is ever sent when frames come faster than the browser should take them.

What is on screen is one run's, all of it: while a run goes, its live frames, seed (drawn before it starts)
and settings; after it, or after "#k show", that run's picture, steps, state, seed, settings and what the
core said about it (warnings in red, notices in a neutral style). The seed box is the user's input, shown
only in "fixed" mode; the seed a run used is always shown beside it ("seed used"), and "reuse this seed"
fixes it. The preview's decoder and target are the step viewer's controls (one control per choice), and a
Studio built under ``plots.presentation(scale)`` is that much larger.
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import replace
from pathlib import Path

import ipywidgets as W

from .. import checks
from ..errors import SdlabError, WrongType
from ..generation import Job, native_size, prepare
from ..noise_schedules import schedule_label
from ..previews import to_jpeg
from ..records import Run, StepEvent
from ..rng import source_name
from ..settings import Settings
from ..toy import is_teaching_model
from .controls import SamplerPicker
from .look import ERROR_STYLE, NOTICE_STYLE, Look, messages, placeholder
from .viewer import StepViewer, _check_run, _picture, prompt_line

PREVIEWS = [("approx (fast)", "approx"), ("TAESD", "taesd"), ("full VAE", "vae"), ("off", "off")]
RNG_CHOICES = [("CPU (diffusers, sdlab)", "cpu"), ("GPU (A1111's default)", "gpu"), ("NV (GPU noise on any device)", "nv")]
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
        self.shown: Run | None = None  # the run on screen (after it ended; None while one is going)
        self.last_error: BaseException | None = None
        self.idle = threading.Event()
        self.idle.set()
        self._pending: StepEvent | None = None
        self._latest: StepEvent | None = None
        self._announced = False  # the running run's notices are on screen
        self._last_frame = 0.0
        self._t_start = 0.0
        self._ticket = 0  # which on_generate the UI belongs to
        self._seed_shown: int | None = None
        s = self.settings
        # read once: a Studio built under plots.presentation(1.6) is 1.6x, whatever the scale is later
        self.look = look = Look.current()
        px = look.px

        wide = W.Layout(width="98%")
        row = dict(flex_flow="row wrap", align_items="center")
        self.prompt = W.Textarea(value=s.prompt, placeholder="Prompt", description="Prompt", layout=wide, rows=2)
        self.negative = W.Textarea(value=s.negative_prompt, placeholder="Negative prompt", description="Negative",
                                   layout=wide, rows=1)
        self.picker = SamplerPicker(s.sampler, s.schedule)
        self.steps = W.IntSlider(value=checked.steps, min=1, max=max(150, checked.steps), description="Steps",
                                 layout=W.Layout(width=px(360)))
        self.cfg = W.FloatSlider(value=checked.cfg, min=0.0, max=max(20.0, checked.cfg), step=0.5,
                                 description="CFG scale", layout=W.Layout(width=px(360)))
        self.seed_mode = W.ToggleButtons(options=["random", "fixed"], value="random" if s.seed is None else "fixed",
                                         style={"button_width": px(80)}, description="Seed",
                                         tooltips=["a new seed for every run", "the seed in the box"])
        self.seed = W.IntText(value=checked.seed if s.seed is not None else 0,
                              layout=W.Layout(width=px(150), display="" if s.seed is not None else "none"))
        self.seed_used = W.HTML(layout=W.Layout(margin=f"0 {px(8)}"))
        self.reuse = W.Button(description="reuse this seed", icon="recycle", layout=W.Layout(width=px(160)),
                              tooltip="Fix the seed to the one the run on screen used", disabled=True)
        # the noise, as A1111 offers it: the random source, and a variation seed mixed in by its strength
        full = {"description_width": "initial"}  # (each label in full, at any scale)
        self.rng = W.Dropdown(options=RNG_CHOICES, value=source_name(s.rng), description="Noise", style=full,
                              layout=W.Layout(width=px(290)),
                              tooltip="A1111's random number generator source: GPU is its default; NV draws the "
                                      "GPU's noise on any device")
        self.subseed = W.BoundedIntText(value=s.subseed or 0, min=0, max=2 ** 32 - 1, description="Variation seed",
                                        style=full, layout=W.Layout(width=px(230)),
                                        tooltip="Mixed in by its strength (0: not at all)")
        self.subseed_strength = W.FloatSlider(value=checked.subseed_strength, min=0.0, max=1.0, step=0.01,
                                              description="strength", style=full, layout=W.Layout(width=px(300)),
                                              tooltip="0: the seed's noise; 1: the variation seed's (A1111's slerp)")
        self.width = W.IntText(value=checked.width, description="Width", layout=W.Layout(width=px(170)))
        self.height = W.IntText(value=checked.height, description="Height", layout=W.Layout(width=px(170)))
        self.viewer = StepViewer(lab=lab)
        # one control per choice: the viewer's decoder and target are also the live preview's
        self.preview, self.target = self.viewer.decoder, self.viewer.target
        self.target.value = preview_target
        if preview != "off":
            self.preview.value = preview  # (a TAESD that is not on this disk is said in the viewer, and refused)
        self.attention = W.Checkbox(value=False, description="record attention", indent=False,
                                    layout=W.Layout(width=px(170)),
                                    tooltip="Keep each step's cross-attention maps: the Word picker shows them")
        from ..attention import cross_attention_layers

        if not cross_attention_layers(lab.pipe.unet):  # the teaching model: its denoiser has no attention
            self.attention.disabled = True
            self.attention.tooltip = ("This model has no cross-attention to record; lab.word_influence(run, words) "
                                      "shows what each word does")
        self.live = W.Checkbox(value=preview != "off", description="live preview", indent=False,
                               layout=W.Layout(width=px(140)),
                               tooltip="Show frames during the run (through the decoder below); off: only the end")
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play",
                                        layout=W.Layout(width=px(130)))
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True,
                                    layout=W.Layout(width=px(100)))
        self.progress = W.HTML(value="ready")
        self.summary = W.HTML()
        self.error = W.HTML(value="")
        self.notes = W.HTML(value="")
        self.history_box = W.HBox(layout=W.Layout(overflow="auto", width="98%"))
        self.save_dir = W.Text(value=str(output_dir), description="Save to", layout=W.Layout(width=px(360)))
        self.save_button = W.Button(description="Save PNG", icon="save", disabled=True, layout=W.Layout(width=px(120)))
        self.save_status = W.HTML()
        # stable class names for styling and for the browser test
        for widget, name in ((self, "sdlab-studio"), (self.progress, "sdlab-progress"), (self.summary, "sdlab-summary"),
                             (self.error, "sdlab-error"), (self.notes, "sdlab-notices"), (self.seed_used, "sdlab-seed-used"),
                             (self.viewer.panel.image, "sdlab-image"), (self.history_box, "sdlab-history")):
            widget.add_class(name)
        self._show_seed(None)
        note = W.HTML(_model_note(lab))

        for widget, name in ((self.prompt, "prompt"), (self.negative, "negative_prompt"), (self.steps, "steps"),
                             (self.cfg, "cfg"), (self.width, "width"), (self.height, "height"),
                             (self.picker.sampler, "sampler"), (self.picker.schedule, "schedule")):
            widget.observe(self._writer(name), names="value")
        self.rng.observe(self._writer("rng"), names="value")
        for widget in (self.subseed, self.subseed_strength):
            widget.observe(lambda _: self._sync_variation(), names="value")
        self.seed.observe(lambda _: self._sync_seed(), names="value")
        self.seed_mode.observe(lambda _: self._sync_seed(), names="value")
        self.reuse.on_click(self._on_reuse)
        self.generate_button.on_click(self.on_generate)
        self.stop_button.on_click(self.on_stop)
        self.save_button.on_click(self.on_save)

        super().__init__([
            look.style(), note, self.prompt, self.negative,
            W.HBox([self.picker, self.steps], layout=W.Layout(**row)),
            W.HBox([self.cfg, self.width, self.height], layout=W.Layout(**row)),
            W.HBox([self.seed_mode, self.seed, self.seed_used, self.reuse], layout=W.Layout(**row)),
            W.HBox([self.rng, self.subseed, self.subseed_strength], layout=W.Layout(**row)),
            W.HBox([self.generate_button, self.stop_button, self.live, self.attention, self.progress],
                   layout=W.Layout(**row)),
            self.summary, self.error, self.notes, self.viewer,
            W.HTML("<b>History</b> (this session)"), self.history_box,
            W.HBox([self.save_dir, self.save_button, self.save_status], layout=W.Layout(**row)),
        ])
        look.apply(self)

    # -- settings, the truth ---------------------------------------------------------------------
    def _writer(self, name: str):
        def write(change):
            self.settings = replace(self.settings, **{name: change["new"]})
        return write

    def _sync_seed(self) -> None:
        fixed = self.seed_mode.value == "fixed"
        self.seed.layout.display = "" if fixed else "none"  # the box is an input: shown only where it is used
        self.settings = replace(self.settings, seed=int(self.seed.value) if fixed else None)

    def _sync_variation(self) -> None:
        """The variation seed is part of the settings only where its strength mixes it in."""
        strength = float(self.subseed_strength.value)
        self.settings = replace(self.settings, subseed_strength=strength,
                                subseed=int(self.subseed.value) if strength > 0 else None)

    def _on_reuse(self, _=None) -> None:
        """Fix the seed to the one on screen (the shown run's, or the running one's)."""
        if self._seed_shown is not None:
            self.seed.value = self._seed_shown
            self.seed_mode.value = "fixed"

    def _show_seed(self, seed: int | None) -> None:
        """The seed a run used, beside the seed controls, in random mode too (the box stays the user's)."""
        self._seed_shown = seed
        self.seed_used.value = ("seed used: <i>none yet</i>" if seed is None else
                                f"seed used: <b class='sdlab-seed-value'>{seed}</b>")
        self.reuse.disabled = seed is None

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
        self.rng.value = source_name(settings.rng)  # (as asked: 'gpu' stays 'gpu', the run says what it drew)
        if (checked.subseed or 0) > self.subseed.max:
            self.subseed.max = checked.subseed
        self.subseed.value = checked.subseed or 0
        self.subseed_strength.value = checked.subseed_strength
        kept = [f"ENSD {checked.ensd}"] if checked.ensd else []
        if checked.seed_resize_from:
            kept.append(f"Seed resize from {checked.seed_resize_from[0]}x{checked.seed_resize_from[1]}")
        if kept:
            said.append(f"{' and '.join(kept)} {'are' if len(kept) > 1 else 'is'} kept from these settings (no control "
                        f"shows {'them' if len(kept) > 1 else 'it'}; the summary line of each run does).")
        if settings.seed is not None:
            self.seed.value = settings.seed
            self.seed_mode.value = "fixed"
        else:
            self.seed_mode.value = "random"
        # the rest travels as it is: schedule parameters, eta, batch, a custom scheduler, where it came from
        self.settings = replace(settings, sampler=self.picker.value[0], schedule=self.picker.value[1],
                                steps=checked.steps, cfg=checked.cfg, width=width, height=height,
                                seed=self.settings.seed)
        self._say(notices=said)
        return said

    def _restore_clicked(self, settings: Settings) -> None:
        try:
            self.restore(settings)
        except Exception as exc:  # said in the UI; the controls keep what they had
            self._show_error(exc)

    # -- actions ---------------------------------------------------------------------------------
    def _running(self) -> bool:
        return self.job is not None and not self.job.done

    def on_generate(self, _=None) -> None:
        if self._running():
            self._show_error("A run is already going. Press Stop, or wait for it to finish.")
            return
        try:
            # prepared here, so that the seed it draws is on screen from the start (the run uses this very one)
            prepared = prepare(self.lab, self.settings)
        except Exception as exc:  # bad settings: said in the UI, nothing started
            self._show_error(exc)
            return
        self._say()
        preview = self.preview.value if self.live.value else None
        self._pending = self._latest = None
        self._announced = False
        self._t_start = time.perf_counter()
        self.idle.clear()
        # the UI is set for the run before it starts: a fast run can end (and call on_done) at once
        self._ticket += 1
        ticket = self._ticket
        shown, self.shown = self.shown, None
        self.generate_button.disabled = True
        self.stop_button.disabled = False
        self.save_button.disabled = True
        self.viewer._begin_live()
        self._show_settings(prepared.settings)
        self.progress.value = f"starting: {html.escape(prepared.settings.sampler)}, seed {prepared.settings.seed}"
        try:
            self.job = self.lab.generate_async(prepared, preview=preview, preview_target=self.target.value,
                                               preview_channels=True, on_step=self._on_step,
                                               attention=bool(self.attention.value and not self.attention.disabled),
                                               on_done=lambda job: self._on_done(job, ticket))
        except Exception as exc:  # refused (another run on this model, out of memory): nothing started
            self._ticket += 1  # (no on_done will come for this one)
            self.generate_button.disabled = False
            self.stop_button.disabled = True
            self.progress.value = "ready"
            if shown is not None:
                self._display(shown)
            self._show_error(exc)
            self.idle.set()

    def on_stop(self, _=None) -> None:
        if self._running():
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
        if not self._announced:  # what the core said before the first step (plan notes, unknown words)
            self._announced = True
            self._say_problems(event.run)
            self.viewer.set_words(event.run)  # the word picker: this run's tokens
        if event.preview is not None:
            self._pending = event
        now = time.perf_counter()
        if now - self._last_frame >= 1.0 / self.max_fps:
            self._flush(now)

    def _flush(self, now: float | None = None) -> None:
        event, self._pending = self._pending, None
        if event is not None:
            preview, word, maps = event.preview, self.viewer.word.value, event.run.attention
            if word >= 0 and maps is not None and event.record.index < len(maps.calls):  # the word's map, live
                from .viewer import overlay

                preview = overlay(preview, maps.calls[event.record.index][0, word].float().numpy())
            self.viewer.panel.show(preview, event.channels)
        if self._latest is not None:
            self.progress.value = _progress(self._latest, time.perf_counter() - self._t_start)
        self._last_frame = now or time.perf_counter()

    def _on_done(self, job: Job, ticket: int | None = None) -> None:
        if ticket is not None and ticket != self._ticket:  # a run this Studio no longer shows: leave the UI
            return
        try:
            self._flush()
            if job.error is None:
                self._add_history(job.run)
            if job.run is not None:
                self._display(job.run, job.error)
            else:  # it failed before it began
                self.progress.value = "failed"
                self._show_error(job.error)
        finally:
            self.generate_button.disabled = False
            self.stop_button.disabled = True
            self.idle.set()

    # -- what is on screen -----------------------------------------------------------------------
    def _say(self, errors=(), notices=()) -> None:
        """Errors and warnings in red, notices in a neutral style; one block each, each said once."""
        self.error.value = messages(errors, ERROR_STYLE, "sdlab-error-item")
        self.notes.value = messages(notices, NOTICE_STYLE, "sdlab-notice")

    def _show_error(self, error) -> None:
        if error is None:
            self._say()
            return
        if isinstance(error, BaseException):
            self.last_error = error
        self._say(errors=[_describe(error)])

    def _say_problems(self, run: Run, error: BaseException | None = None) -> None:
        """What the core said about this run: its error, its warnings (red), its notices (neutral)."""
        error = error if error is not None else run.error
        if isinstance(error, BaseException):
            self.last_error = error
        warnings = [p for p in run.problems if p not in run.notices]
        self._say(errors=([_describe(error)] if error is not None else []) + warnings, notices=run.notices)

    def _show_settings(self, settings: Settings) -> None:
        self._show_seed(settings.seed)
        self.summary.value = _summary(settings)

    def _display(self, run: Run, error: BaseException | None = None) -> None:
        """Put a run on screen, all of it and only it: its picture and steps, its state, seed and settings,
        and what the core said about it (a run shown from the history replaces everything of the last).
        ``error``: what ended it, where the run itself does not hold it."""
        failed = run.failed or error is not None
        self.shown = run
        self.viewer.show_run(run)
        self._show_settings(run.settings)
        self.progress.value = self._status(run, "failed" if failed else run.state)
        self._say_problems(run, error)
        self.save_button.disabled = run.image is None or failed

    def _status(self, run: Run, state: str) -> str:
        number = self._numbers.get(id(run))
        head = f"#{number} " if number else ""
        last = run.records[-1].step if run.records else 0
        took = "" if state == "failed" else f" &middot; {run.seconds:.1f} s"
        return (f"{head}{state}: step {last}/{run.settings.steps} &middot; NFE {run.nfe}{took} &middot; "
                f"seed {run.settings.seed}")

    # -- history ---------------------------------------------------------------------------------
    def show(self, run: Run) -> None:
        """Show a run (one from ``studio.history``): its picture, steps, seed, settings and messages."""
        run = _check_run(run)
        if self._running():  # the live run owns the screen until it ends
            self.notes.value += messages(["A run is going: show another once it has ended (or press Stop)."],
                                         NOTICE_STYLE, "sdlab-notice")
            return
        self._display(run)

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
        s, px = run.settings, self.look.px
        try:
            rgb = _picture(run, self.preview.value, self.viewer._vae())  # what the view shows at its last step, as x0
        except SdlabError:
            rgb = _picture(run)
        img = W.Image(value=to_jpeg(rgb, max_side=96) if rgb is not None else placeholder(), format="jpeg",
                      layout=W.Layout(width=px(110), height=px(110), object_fit="contain"))
        show = W.Button(description=f"#{number} show", layout=W.Layout(width=px(110)))
        restore = W.Button(description="restore", layout=W.Layout(width=px(110)),
                           tooltip="Put this run's settings back into the controls")
        show.on_click(lambda _: self.show(run))
        restore.on_click(lambda _: self._restore_clicked(run.settings))
        ended = f" (stopped at step {run.records[-1].step})" if run.stopped and run.records else ""
        label = W.HTML(f"<div style='width:{px(110)};overflow-wrap:anywhere;line-height:1.25'><small>"
                       f"{html.escape(s.sampler)}<br>{s.steps} steps, cfg {s.cfg:g}<br>seed {s.seed}{ended}</small></div>")
        return W.VBox([img, label, show, restore], layout=W.Layout(margin=f"0 {px(6)} 0 0"))


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


def _describe(error) -> str:
    return f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)


def _summary(s: Settings) -> str:
    """The settings of a run in one line: what a class needs to know to read its picture."""
    negative = f" &middot; negative: &ldquo;{html.escape(s.negative_prompt)}&rdquo;" if s.negative_prompt else ""
    return (f"{html.escape(s.sampler)} &middot; {html.escape(schedule_label(s.schedule))} schedule &middot; "
            f"{s.steps} steps &middot; CFG {s.cfg:g} &middot; {s.width}x{s.height} &middot; seed {s.seed} &middot; "
            f"prompt: &ldquo;{html.escape(s.prompt)}&rdquo;{negative}{_noise_summary(s)}")


def _noise_summary(s: Settings) -> str:
    """The noise, where it is not the default CPU draw of the seed alone."""
    parts = [] if s.rng == "cpu" else [f"noise {s.rng.upper()}"]
    if s.subseed_strength:
        parts.append(f"variation seed {s.subseed} at {s.subseed_strength:g}")
    if s.ensd:
        parts.append(f"ENSD {s.ensd}")
    if s.seed_resize_from:
        parts.append(f"seed resized from {s.seed_resize_from[0]}x{s.seed_resize_from[1]}")
    return "".join(f" &middot; {html.escape(p)}" for p in parts)


def _progress(event: StepEvent, elapsed: float) -> str:
    r = event.record
    rate = r.step / elapsed if elapsed > 0 else 0.0
    eta = (r.total_steps - r.step) / rate if rate > 0 else float("nan")
    line = f"step {r.step}/{r.total_steps} &middot; NFE {r.nfe} &middot; {rate:.1f} it/s &middot; ETA {eta:.0f} s"
    return line + prompt_line(event.run, r.index)  # the prompt in effect now, where sdlab read A1111's syntax
