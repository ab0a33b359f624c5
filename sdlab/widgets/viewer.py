"""Showing a run: the image, the 4 latent channels, and a step slider to scrub through the records."""
from __future__ import annotations

import ipywidgets as W
import numpy as np

from .. import checks
from ..errors import SdlabError, WrongType
from ..previews import approx_rgb, latent_channels, to_jpeg, vae_rgb
from ..records import Run


def _grey_jpeg(channel: np.ndarray) -> bytes:
    return to_jpeg(np.repeat(channel[:, :, None], 3, axis=2), max_side=None)


class ImagePanel(W.HBox):
    """The decoded image and the latent channels side by side, updated in place."""

    def __init__(self, size: int = 384):
        self.image = W.Image(format="jpeg", layout=W.Layout(width=f"{size}px", height=f"{size}px",
                                                             object_fit="contain", border="1px solid #ccc"))
        self.channels = [W.Image(format="jpeg", layout=W.Layout(width=f"{size // 2 - 6}px", height=f"{size // 2 - 6}px",
                                                                object_fit="contain"))
                         for _ in range(4)]
        labels = [W.VBox([W.Label(f"latent channel {i + 1}"), img]) for i, img in enumerate(self.channels)]
        grid = W.GridBox(labels, layout=W.Layout(grid_template_columns="repeat(2, auto)"))
        self.frames = 0
        super().__init__([self.image, grid])

    def show(self, rgb: np.ndarray | None, channels: np.ndarray | None = None) -> None:
        """Set the image (and channels); a trait assignment, safe from a worker thread."""
        if rgb is not None:
            self.image.value = to_jpeg(rgb)
            self.frames += 1
        if channels is not None:
            for img, ch in zip(self.channels, channels):
                img.value = _grey_jpeg(ch)


class StepViewer(W.VBox):
    """Scrub through a finished run: x_t or x0 of any recorded step, its sigma and timestep.

    ``sdlab.StepViewer(run)`` works alone; the Studio embeds one. Given the model (``lab=``), the
    decoder can be switched from the linear approximation to the full VAE (slower, true colours)."""

    def __init__(self, run: Run | None = None, size: int = 384, lab=None):
        if run is not None:
            _check_run(run)
        if lab is not None:
            checks.lab("lab", lab)
        size = checks.whole("size", size, low=32, high=4096, hint=" It is the picture's side in pixels.")
        self.panel = ImagePanel(size)
        # 1-based: the slider shows the record number the info line names ("call k")
        self.slider = W.IntSlider(min=1, max=1, value=1, description="Record", continuous_update=True,
                                  layout=W.Layout(width="420px"))
        self.play = W.Play(min=1, max=1, interval=150, description="Play")
        W.jslink((self.play, "value"), (self.slider, "value"))
        self.target = W.ToggleButtons(options=[("x0 (predicted)", "x0"), ("x_t (latents)", "xt")], value="x0",
                                      style={"button_width": "110px"})
        self.decoder = W.ToggleButtons(options=[("approx", "approx"), ("VAE", "vae")], value="approx",
                                       style={"button_width": "70px"}, layout=W.Layout(display="" if lab else "none"))
        self.lab = lab
        self.info = W.HTML()
        self.run: Run | None = None
        for control in (self.slider, self.target, self.decoder):
            control.observe(lambda _: self._render(), names="value")
        super().__init__([W.HBox([self.play, self.slider, self.target, self.decoder]), self.info, self.panel])
        if run is not None:
            self.show_run(run)

    def show_run(self, run: Run) -> None:
        self.run = _check_run(run)
        n = max(len(run.records), 1)
        old = self.slider.value
        self.slider.max = self.play.max = n
        self.slider.value = n  # a changed value renders through the observer
        if self.slider.value == old:
            self._render()

    def _render(self) -> None:
        run = self.run
        if run is None or not run.records:
            self.info.value = "<i>no steps recorded</i>"
            return
        rec = run.records[self.slider.value - 1]
        try:
            tensor = rec.view(self.target.value)
        except SdlabError:
            self.info.value = "<i>this run kept no tensors (record=False)</i>"
            return
        if self.decoder.value == "vae" and self.lab is not None:
            rgb = vae_rgb(self.lab.pipe.vae, tensor)
        else:
            rgb = approx_rgb(tensor, run.family)
        self.panel.show(rgb, latent_channels(tensor))
        sigma = "n/a" if rec.sigma is None else f"{rec.sigma:.4f}"
        self.info.value = (f"step {rec.step}/{rec.total_steps} &middot; call {rec.index + 1}/{len(run.records)} &middot; "
                           f"timestep {rec.timestep:.1f} &middot; sigma {sigma} &middot; NFE {rec.nfe}")


def _check_run(run) -> Run:
    if isinstance(run, Run):
        return run
    raise WrongType(f"run must be a Run (what lab.generate returns), not {type(run).__name__} {run!r:.40}.",
                    argument="run")
