"""The schedule explorer: schedule types, step count and rho as controls; the plot updates in place."""
from __future__ import annotations

import ipywidgets as W
import numpy as np

from .. import noise_schedules as S
from .. import checks
from ..plots import DEFAULT_SCHEDULES, Y_AXES, _schedule_names, _training, _y, plot_schedules, png_bytes


class ScheduleExplorer(W.VBox):
    """Pick schedule types, n, rho and the y axis; the figure is drawn once, then its lines are mutated
    (``set_data``) and re-rendered into the same Image widget."""

    def __init__(self, model=None, names=("uniform", "karras", "exponential", "align_your_steps"), n: int = 20,
                 rho: float = 7.0):
        (self.training, self.family), names = _training(model), _schedule_names(names)
        chosen = tuple(S.resolve_schedule(x) for x in names)
        for name in chosen:
            checks.choice("names", name, DEFAULT_SCHEDULES, hint=" The explorer draws those schedules.")
        n = checks.whole("n", n, low=2, high=1000)
        rho = checks.number("rho", rho, low=0, low_open=True, high=100)
        options = [(S.schedule_label(k), k) for k in DEFAULT_SCHEDULES]
        self.names = W.SelectMultiple(options=options, value=chosen, description="Schedules", rows=len(options))
        # a range that holds the value asked for (a slider would clamp it silently)
        self.n = W.IntSlider(value=n, min=2, max=max(100, n), description="Steps")
        self.rho = W.FloatSlider(value=rho, min=min(1.0, rho), max=max(15.0, rho), step=0.5, description="rho (Karras)")
        self.y = W.Dropdown(options=list(Y_AXES), value="sigma", description="y axis")
        self.image = W.Image(format="png")
        self.renders = 0
        self.drawn = plot_schedules(DEFAULT_SCHEDULES, n, self.training, y="sigma", rho=rho)
        for c in (self.names, self.n, self.rho, self.y):
            c.observe(lambda _: self.update(), names="value")
        super().__init__([W.HBox([self.names, W.VBox([self.n, self.rho, self.y])]), self.image])
        self.update()

    @property
    def lines(self):
        return self.drawn.artists

    def update(self) -> None:
        n, y = self.n.value, self.y.value
        shown = set(self.names.value)
        for name, line in self.lines.items():
            params = {"rho": self.rho.value} if name == "karras" else {}
            sig = S.sigmas(name, n, model=self.training, family=self.family, **params)
            values = sig if y == "sigma" else sig[:-1]
            line.set_data(np.arange(len(values)), _y(values, y, self.training))
            line.set_visible(name in shown)
        ax = self.drawn.ax
        ax.set_yscale("linear")
        ax.relim(visible_only=True)
        ax.autoscale_view()
        ax.set_ylabel(y.replace("_", " "))
        ax.set_title(f"{n} steps" + (f", Karras rho {self.rho.value:g}" if "karras" in shown else ""))
        ax.legend(handles=[l for l in self.lines.values() if l.get_visible()], fontsize="small")
        self.image.value = png_bytes(self.drawn.figure)
        self.renders += 1
