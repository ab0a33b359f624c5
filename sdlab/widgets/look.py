"""How the views look on a projector: the presentation scale, placeholders, and message styles.

A view reads ``plots.presentation_scale()`` once, when it is built (``Look.current()``), and sizes itself
with it: every width and height it sets goes through ``look.px``, and its text through ipywidgets' own
CSS variables (``--jp-widgets-font-size`` and the line height and label width that go with it), set on a
class only the view's elements carry. So a Studio built after ``plots.presentation(1.6)`` has 1.6x text,
controls and pictures, and one built before keeps its size.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache

import ipywidgets as W
import numpy as np

from ..previews import to_jpeg

# JupyterLab's and ipywidgets' own sizes at scale 1 (their CSS defaults), scaled together
_BASE = {"--jp-widgets-font-size": 13, "--jp-widgets-inline-height": 28, "--jp-widgets-inline-label-width": 80,
         "--jp-widgets-inline-width": 300, "--jp-widgets-slider-handle-size": 16,
         "--jp-widgets-slider-track-thickness": 4}
FONT_PX = _BASE["--jp-widgets-font-size"]

# a placeholder is a picture (never an empty <img>, which browsers draw as a broken-image icon): a flat
# neutral grey; the image pane's lighter, the latent channels' the grey a zero latent shows as
PLACEHOLDER_IMAGE = 224
PLACEHOLDER_CHANNEL = 128

NOTICE_STYLE = "color:#333;background:#eef1f5;border-left:4px solid #8a99ad;padding:2px 8px;margin:2px 0"
ERROR_STYLE = "color:#b00;background:#fdecec;border-left:4px solid #b00;padding:2px 8px;margin:2px 0"


@lru_cache(maxsize=4)
def placeholder(grey: int = PLACEHOLDER_IMAGE) -> bytes:
    """A small flat grey JPEG: an Image widget shows it scaled to its box (object-fit), so one fits every pane."""
    return to_jpeg(np.full((8, 8, 3), grey, np.uint8), max_side=None)


@dataclass(frozen=True)
class Look:
    scale: float = 1.0

    @classmethod
    def current(cls) -> "Look":
        from ..plots import presentation_scale

        return cls(float(presentation_scale()))

    def px(self, n: float) -> str:
        return f"{round(n * self.scale)}px"

    @property
    def css_class(self) -> str:
        return f"sdlab-scale-{round(self.scale * 100)}"

    def style(self) -> W.HTML:
        """An HTML widget whose <style> scales ipywidgets' sizes inside ``css_class`` (an empty one at scale 1)."""
        if self.scale == 1.0:
            return W.HTML("", layout=W.Layout(display="none"))
        rules = ";".join(f"{k}:{self.px(v)}" for k, v in _BASE.items())
        return W.HTML(f"<style>.{self.css_class}{{{rules};font-size:{self.px(FONT_PX)}}}</style>",
                      layout=W.Layout(display="none"))

    def apply(self, widget: W.DOMWidget) -> W.DOMWidget:
        widget.add_class("sdlab-look")
        widget.add_class(self.css_class)
        return widget


def messages(items, style: str, css: str) -> str:
    """HTML for messages, one block each, in order, each said once."""
    seen: list[str] = []
    for item in items:
        text = str(item).strip()
        if text and text not in seen:
            seen.append(text)
    return "".join(f"<div class='{css}' style='{style};white-space:pre-wrap'>{html.escape(t)}</div>" for t in seen)
