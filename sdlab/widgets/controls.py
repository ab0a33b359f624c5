"""Small reusable controls."""
from __future__ import annotations

import ipywidgets as W

from ..noise_schedules import AUTOMATIC, resolve_schedule, schedule_label
from ..sampler_catalog import CATALOG, parse_sampler, resolve
from .look import NOTICE_STYLE, Look, messages


class SamplerPicker(W.VBox):
    """A sampler dropdown and a schedule dropdown that only offers what the chosen sampler can follow.

    ``picker.value`` is ``(sampler, schedule)`` in sdlab's names; setting it updates both dropdowns.
    "Automatic" is labelled with what it means for the chosen sampler (the catalog's resolution), and when
    a new sampler cannot follow the chosen schedule, the schedule goes back to Automatic and the picker
    says so in ``picker.note`` (``picker.said`` holds the sentence; empty when nothing changed)."""

    def __init__(self, sampler: str = "DPM++ 2M", schedule: str = AUTOMATIC, **kwargs):
        name, schedule = _pair(sampler, schedule)
        look = Look.current()
        self.sampler = W.Dropdown(options=list(CATALOG), value=name, description="Sampler",
                                  layout=W.Layout(width=look.px(260)))
        self.schedule = W.Dropdown(description="Schedule", layout=W.Layout(width=look.px(300)))
        self.note = W.HTML()
        self.note.add_class("sdlab-picker-note")
        self.said = ""
        self._fill(name, schedule)
        self.sampler.observe(self._on_sampler, names="value")
        super().__init__([W.HBox([self.sampler, self.schedule], layout=W.Layout(flex_flow="row wrap")), self.note],
                         **kwargs)

    def _fill(self, sampler: str, keep: str) -> None:
        supported = CATALOG[sampler].supported_schedules()
        automatic = resolve(sampler, AUTOMATIC)[1]  # what the core runs for "automatic" with this sampler
        auto_label = "Automatic" if automatic == AUTOMATIC else f"Automatic ({schedule_label(automatic)})"
        chosen = keep if keep in supported else AUTOMATIC
        with self.schedule.hold_sync():  # the options and the choice reach the page in one message
            self.schedule.options = [(auto_label if s == AUTOMATIC else schedule_label(s), s) for s in supported]
            self.schedule.value = chosen
        self.said = "" if chosen == keep else (
            f"{sampler} cannot follow the {schedule_label(keep)} schedule, so the schedule is now "
            f"{auto_label}.")
        self.note.value = messages([self.said], NOTICE_STYLE, "sdlab-notice") if self.said else ""

    def _on_sampler(self, change) -> None:
        self._fill(change["new"], self.schedule.value)

    @property
    def value(self) -> tuple[str, str]:
        return self.sampler.value, self.schedule.value

    @value.setter
    def value(self, pair: tuple[str, str]) -> None:
        name, schedule = _pair(*pair)
        self.sampler.value = name
        self._fill(name, schedule)


def _pair(sampler: str, schedule: str) -> tuple[str, str]:
    """(catalog name, schedule as chosen: 'automatic' stays automatic); raises for impossible pairs."""
    spec, _ = resolve(sampler, schedule)  # validates
    _, legacy = parse_sampler(sampler)
    return spec.name, legacy or resolve_schedule(schedule)

