"""Small reusable controls."""
from __future__ import annotations

import ipywidgets as W

from ..noise_schedules import AUTOMATIC, resolve_schedule, schedule_label
from ..sampler_catalog import CATALOG, parse_sampler, resolve


class SamplerPicker(W.HBox):
    """A sampler dropdown and a schedule dropdown that only offers what the chosen sampler can follow.

    ``picker.value`` is ``(sampler, schedule)`` in sdlab's names; setting it updates both dropdowns."""

    def __init__(self, sampler: str = "DPM++ 2M", schedule: str = AUTOMATIC, **kwargs):
        name, schedule = _pair(sampler, schedule)
        self.sampler = W.Dropdown(options=list(CATALOG), value=name, description="Sampler",
                                  layout=W.Layout(width="260px"))
        self.schedule = W.Dropdown(description="Schedule", layout=W.Layout(width="260px"))
        self._fill(name, schedule)
        self.sampler.observe(self._on_sampler, names="value")
        super().__init__([self.sampler, self.schedule], **kwargs)

    def _fill(self, sampler: str, keep: str) -> None:
        supported = CATALOG[sampler].supported_schedules()
        self.schedule.options = [(schedule_label(s), s) for s in supported]
        self.schedule.value = keep if keep in supported else AUTOMATIC

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
