"""Showing a run: the image, the 4 latent channels, and a step slider to scrub through the records.

What a step shows is decided in one place, ``_frame``: the record's x0 or x_t, decoded with the chosen
decoder; and at the last record of a finished run, the run's own picture (the pipeline's decode of its
final latents, which are that record's x_t and, at the last step, its x0). So scrubbing back to the last
step shows exactly what the view showed when the run ended, and a stopped run, whose pipeline decoded
half-denoised latents, shows its last x0: a picture, not noise.
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from .. import checks
from ..errors import SdlabError, WrongType
from ..previews import PreviewUnavailable, approx_rgb, latent_channels, load_taesd, to_jpeg, vae_rgb
from ..records import Run
from .look import NOTICE_STYLE, PLACEHOLDER_CHANNEL, Look, messages, placeholder

DECODERS = [("approx (fast)", "approx"), ("TAESD", "taesd"), ("full VAE", "vae")]
TARGETS = [("x0: predicted picture", "x0"), ("x_t: noisy sample", "xt")]
_TARGET_NAMES = {"x0": "x0", "xt": "x_t"}
_DECODER_NAMES = {value: label for label, value in DECODERS}


def _grey_jpeg(channel: np.ndarray) -> bytes:
    return to_jpeg(np.repeat(channel[:, :, None], 3, axis=2), max_side=None)


class ImagePanel(W.HBox):
    """The decoded image and the latent channels side by side, updated in place. Before anything is shown,
    and after ``clear()``, each pane holds a flat grey placeholder picture."""

    def __init__(self, size: int = 384, look: Look | None = None):
        look = look or Look()
        self.image = W.Image(value=placeholder(), format="jpeg",
                             layout=W.Layout(width=look.px(size), height=look.px(size), object_fit="contain",
                                             border="1px solid #ccc"))
        side = look.px(size // 2 - 6)
        self.channels = [W.Image(value=placeholder(PLACEHOLDER_CHANNEL), format="jpeg",
                                 layout=W.Layout(width=side, height=side, object_fit="contain"))
                         for _ in range(4)]
        labels = [W.VBox([W.HTML(f"latent channel {i + 1}"), img]) for i, img in enumerate(self.channels)]
        grid = W.GridBox(labels, layout=W.Layout(grid_template_columns="repeat(2, auto)", margin=f"0 0 0 {look.px(8)}"))
        self.frames = 0
        super().__init__([self.image, grid], layout=W.Layout(flex_flow="row wrap"))

    def show(self, rgb: np.ndarray | None, channels: np.ndarray | None = None) -> None:
        """Set the image (and channels); a trait assignment, safe from a worker thread."""
        if rgb is not None:
            self.image.value = to_jpeg(rgb)
            self.frames += 1
        if channels is not None:
            for img, ch in zip(self.channels, channels):
                img.value = _grey_jpeg(ch)

    def clear(self) -> None:
        self.image.value = placeholder()
        for img in self.channels:
            img.value = placeholder(PLACEHOLDER_CHANNEL)


def _decode(tensor, decoder: str, family: str, vae=None) -> np.ndarray:
    """A latent tensor as a picture: the cheap linear map, or a full decode with ``vae`` (the VAE or TAESD)."""
    if decoder in ("vae", "taesd") and vae is not None:
        return vae_rgb(vae, tensor)
    return approx_rgb(tensor, family)


def _frame(run: Run, index: int, target: str = "x0", decoder: str = "approx", vae=None):
    """What record ``index`` of ``run`` shows: (rgb or None, latent channels or None, is_final). The last
    record of a finished run shows the run's picture; every other, its x0 or x_t through the decoder.
    rgb is None where the run kept no tensors (record=False) and this is not its final picture."""
    rec = run.records[index]
    try:
        tensor = rec.view(target)
    except SdlabError:  # record=False: no tensors, only the metadata (and the picture, if it finished)
        tensor = None
    if index == len(run.records) - 1 and run.state == "done" and run.image is not None:
        if tensor is None:
            tensor = run.final_latents
        channels = None if tensor is None else latent_channels(tensor)
        return np.asarray(run.image.convert("RGB")), channels, True
    if tensor is None:
        return None, None, False
    return _decode(tensor, decoder, run.family, vae), latent_channels(tensor), False


def _picture(run: Run, decoder: str = "approx", vae=None) -> np.ndarray | None:
    """The picture that stands for a run (its thumbnail): a finished run's image, else its last x0."""
    if not run.records:
        return np.asarray(run.image.convert("RGB")) if run.image is not None and run.state == "done" else None
    return _frame(run, len(run.records) - 1, "x0", decoder, vae)[0]


class StepViewer(W.VBox):
    """Scrub through a finished run: x_t or x0 of any recorded step, its sigma and timestep.

    ``sdlab.StepViewer(run)`` works alone; the Studio embeds one, and its target and decoder controls are
    the Studio's too (the live preview uses them). Given the model (``lab=``), the decoder can be switched
    from the linear approximation to TAESD or the full VAE (slower, true colours)."""

    def __init__(self, run: Run | None = None, size: int = 384, lab=None):
        if run is not None:
            _check_run(run)
        if lab is not None:
            checks.lab("lab", lab)
        size = checks.whole("size", size, low=32, high=4096, hint=" It is the picture's side in pixels.")
        self.look = look = Look.current()
        self.panel = ImagePanel(size, look)
        # 1-based: the slider shows the record number the info line names ("call k")
        self.slider = W.IntSlider(min=1, max=1, value=1, description="Record", continuous_update=True,
                                  layout=W.Layout(width=look.px(330)))
        self.play = W.Play(min=1, max=1, interval=150, description="Play")
        W.jslink((self.play, "value"), (self.slider, "value"))
        self.target = W.ToggleButtons(options=TARGETS, value="x0", description="Show",
                                      style={"button_width": "auto"},  # each label in full, at any scale
                                      tooltips=["the model's current guess of the clean picture",
                                                "the sample itself, noise and all"])
        self.decoder = W.Dropdown(options=DECODERS if lab is not None else DECODERS[:1], value="approx",
                                  description="Decoder", layout=W.Layout(width=look.px(230),
                                                                         display="" if lab else "none"))
        self.lab = lab
        self.info = W.HTML()
        self.note = W.HTML()
        self.run: Run | None = None
        self._taesd = None
        self.slider.observe(lambda _: self._render(), names="value")
        self.target.observe(lambda _: self._render(), names="value")
        self.decoder.observe(self._on_decoder, names="value")
        # a word of the prompt whose cross-attention map is laid over the picture (runs with attention=True)
        self.word = W.Dropdown(options=[("(none)", -1)], value=-1, description="Word", style={"description_width": "initial"},
                               layout=W.Layout(width=look.px(200), display="none"),
                               tooltip="Show where this word is attended to at the step shown")
        self.word.observe(lambda _: self._render(), names="value")
        self.controls = W.HBox([self.play, self.slider, self.target, self.decoder, self.word],
                               layout=W.Layout(flex_flow="row wrap", align_items="center"))
        super().__init__([look.style(), self.controls, self.info, self.note, self.panel])
        look.apply(self)
        if run is not None:
            self.show_run(run)

    # -- the decoder ------------------------------------------------------------------------------
    def _vae(self, decoder: str | None = None):
        """The decoder module for ``decoder`` (the chosen one by default): the model's VAE, TAESD (loaded
        once, from disk only), or None for the linear map. Raises PreviewUnavailable for a missing TAESD."""
        decoder = decoder or self.decoder.value
        if self.lab is None or decoder == "approx":
            return None
        if decoder == "vae":
            return self.lab.pipe.vae
        if self._taesd is None:
            self._taesd = load_taesd(self.lab.family, device=self.lab.device, dtype=self.lab.dtype)
        return self._taesd

    def _on_decoder(self, change) -> None:
        self.note.value = ""
        try:
            self._vae(change["new"])
        except PreviewUnavailable as exc:  # said, and the choice goes back to what worked
            self.decoder.value = change["old"]
            self.note.value = messages([exc], NOTICE_STYLE, "sdlab-notice")
            return
        self._render()

    # -- runs -------------------------------------------------------------------------------------
    def _begin_live(self) -> None:
        """A run is starting: its frames come from outside (the Studio's live preview); the slider waits."""
        self.run = None
        self.slider.disabled = self.play.disabled = True
        self.panel.clear()
        self.info.value = "<i>generating...</i>"

    def set_words(self, run: Run | None) -> None:
        """The word picker's choices: the tokens of a run that recorded attention (hidden otherwise)."""
        maps = getattr(run, "attention", None)
        tokens = [] if maps is None else maps.labels()
        options = [("(none)", -1)] + [(f"{i}: {t}", i) for i, t in enumerate(tokens)]
        if [o[1] for o in self.word.options] != [o[1] for o in options] or \
                [o[0] for o in self.word.options] != [o[0] for o in options]:
            keep = self.word.value if self.word.value < len(tokens) else -1
            self.word.options = options
            self.word.value = keep
        self.word.layout.display = "" if tokens else "none"

    def show_run(self, run: Run) -> None:
        self.set_words(run)
        self.run = _check_run(run)
        self.slider.disabled = self.play.disabled = False
        n = max(len(run.records), 1)
        old = self.slider.value
        self.slider.max = self.play.max = n
        self.slider.value = n  # a changed value renders through the observer
        if self.slider.value == old:
            self._render()

    def _render(self) -> None:
        run = self.run
        if run is None:
            return
        if not run.records:
            self.panel.clear()
            self.info.value = "<i>no steps recorded</i>"
            return
        index = self.slider.value - 1
        rec = run.records[index]
        try:
            vae = self._vae()
        except PreviewUnavailable:  # (the choice was refused when it was made; keep the cheap map)
            vae = None
        rgb, channels, final = _frame(run, index, self.target.value, self.decoder.value, vae)
        if rgb is None:
            self.panel.clear()
            self.info.value = "<i>this run kept no tensors (record=False)</i>"
            return
        word = self.word.value
        if word >= 0 and run.attention is not None and index < len(run.attention.calls):
            rgb = overlay(rgb, run.attention.calls[index][0, word].float().numpy())
        self.panel.show(rgb, channels)
        sigma = "n/a" if rec.sigma is None else f"{rec.sigma:.4f}"
        shown = ("<b>the run's picture</b> (the pipeline's decode of its final latents)" if final else
                 f"{_TARGET_NAMES[self.target.value]} through {html.escape(_DECODER_NAMES[self.decoder.value])}")
        self.info.value = (f"step {rec.step}/{rec.total_steps} &middot; call {rec.index + 1}/{len(run.records)} &middot; "
                           f"timestep {rec.timestep:.1f} &middot; sigma {sigma} &middot; NFE {rec.nfe} &middot; {shown}"
                           f"{prompt_line(run, index)}{attention_line(run, index)}")


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """A map laid over a picture: the map (scaled to its maximum) in a black-red-yellow-white scale, blended in
    where it is high; the map is resized to the picture (bilinear)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    peak = float(heat.max())
    m = heat / peak if peak > 0 else heat
    m = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float64) / 255
    hot = np.stack([np.clip(3 * m, 0, 1), np.clip(3 * m - 1, 0, 1), np.clip(3 * m - 2, 0, 1)], -1) * 255
    a = (alpha * m)[..., None]
    return (rgb.astype(np.float64) * (1 - a) + hot * a).astype(np.uint8)


def attention_line(run: Run, index: int, top: int = 6) -> str:
    """Each word's share of the prompt's attention at one call (the largest first), for runs that recorded it."""
    maps = getattr(run, "attention", None)
    if maps is None or index >= len(maps.calls) or not maps.tokens:
        return ""
    sums = maps.calls[index][0].float().sum(dim=(1, 2)).numpy()
    total = float(sums.sum())
    if total <= 0:
        return ""
    order = np.argsort(-sums)[:top]
    labels = maps.labels()
    shares = ", ".join(f"{html.escape(labels[i])} {sums[i] / total:.0%}" for i in order)
    return f"<br>attention at this call: {shares}"


def prompt_line(run: Run, index: int) -> str:
    """The prompt a call was conditioned on (where sdlab read A1111's syntax), as lines of the viewer's info,
    marked where prompt editing switched to it; the negative prompt too where it is edited. Empty for a run
    whose prompts the pipeline read as plain text."""
    lines = []
    for negative, label in ((False, "prompt"), (True, "negative prompt")):
        shown = run.prompt_shown(index, negative)
        changes = run.prompt_changes(negative)
        if shown is None or (negative and len(changes) < 2):
            continue
        switched = len(changes) > 1 and any(i == index for i, _ in changes[1:])
        mark = f" <b>(the {label} changes here)</b>" if switched else ""
        lines.append(f"<br>{label} in effect: &ldquo;{html.escape(shown)}&rdquo;{mark}")
    return "".join(lines)


def _check_run(run) -> Run:
    if isinstance(run, Run):
        return run
    raise WrongType(f"run must be a Run (what lab.generate returns), not {type(run).__name__} {run!r:.40}.",
                    argument="run")
