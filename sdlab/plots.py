"""Plots of what the core computes: schedules, plans, runs, step grids, X/Y sweeps, animations.

Every function takes ``ax=`` (or ``axes=``) to draw into, or makes its own matplotlib Figure (no pyplot
state), and returns a :class:`Drawn`: the figure, the axes and the artists it drew, keyed by what they
show. A Drawn displays itself in a notebook.
"""
from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import checks
from .errors import InvalidArgument, MissingDependency, SdlabError, WrongType
from . import noise_schedules as S
from .analysis import Sweep, band_labels, last_record_per_step, run_stats, schedule_table, steps_per_band
from .previews import approx_rgb, vae_rgb
from .records import Run
from .plans import plan as scheduler_plan

DEFAULT_SCHEDULES = ("uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
                     "align_your_steps", "beta")
Y_AXES = ("sigma", "log_sigma", "timestep", "snr", "log_snr")


# -- presentation scale: big enough to project ------------------------------------------------------------
# matplotlib resolves a text's size ("small", 10) when the text is made, from rcParams; so the scale is
# set there, for every figure made afterwards (sdlab's and the notebooks' own), and the Studio reads it.
_SCALED = {"font.size": 1, "lines.linewidth": 1, "lines.markersize": 1, "axes.linewidth": 1,
           "grid.linewidth": 1, "xtick.major.width": 1, "ytick.major.width": 1, "xtick.major.size": 1,
           "ytick.major.size": 1, "legend.handlelength": 0}
_presentation = {"scale": 1.0}


class Presentation:
    """What ``presentation()`` returns: the scale now in effect; as a context manager it restores the
    previous scale on exit."""

    def __init__(self, scale: float, previous: float):
        self.scale, self.previous = scale, previous

    def __enter__(self) -> "Presentation":
        return self

    def __exit__(self, *exc) -> None:
        _set_scale(self.previous)

    def __repr__(self) -> str:
        return f"Presentation(scale={self.scale:g}): plots and the Studio are drawn {self.scale:g}x larger"


def _set_scale(scale: float) -> None:
    defaults = matplotlib.rcParamsDefault
    for key, scaled in _SCALED.items():
        if scaled:
            matplotlib.rcParams[key] = defaults[key] * scale
    _presentation["scale"] = scale


def presentation(scale: float = 1.6) -> Presentation:
    """Draw every plot made from now on (sdlab's and your own matplotlib figures) and every Studio built
    from now on with text and lines ``scale`` times larger, for a projector: ``plots.presentation()`` in a
    notebook's first cell, ``plots.presentation(1)`` back to normal, or ``with plots.presentation(2): ...``
    for one cell. Figures keep their size in inches, so the text takes more of each figure."""
    scale = checks.number("scale", scale, low=0.5, high=4, hint=" It multiplies text and line sizes; 1 is normal.")
    previous = _presentation["scale"]
    _set_scale(scale)
    return Presentation(scale, previous)


def presentation_scale() -> float:
    """The scale ``presentation()`` set (1.0 unless it was called)."""
    return _presentation["scale"]


def _integer_steps(*axes) -> None:
    """Step and UNet-call axes count whole steps: no 2.5 or 7.5 ticks."""
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@dataclass
class Drawn:
    figure: Figure
    axes: list
    artists: dict[str, Any] = field(default_factory=dict)

    @property
    def ax(self):
        return self.axes[0]

    def _repr_png_(self) -> bytes:
        return png_bytes(self.figure)

    def save(self, path, **kwargs) -> Path:
        self.figure.savefig(path, bbox_inches="tight", **kwargs)
        return Path(path)


def show(figure: Figure) -> Drawn:
    """Wrap a figure you drew yourself so that a notebook displays it (no pyplot needed)."""
    return Drawn(_figure(figure), list(figure.axes))


def png_bytes(figure: Figure, dpi: int = 96) -> bytes:
    _figure(figure)
    dpi = checks.whole("dpi", dpi, low=10, high=1200)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# -- what the plots take, checked where they take it ----------------------------------------------------------
def _figure(figure) -> Figure:
    if isinstance(figure, Figure):
        return figure
    raise WrongType(f"figure must be a matplotlib Figure, not {type(figure).__name__}.", argument="figure")


def _ax(ax, name: str = "ax"):
    if ax is None or (hasattr(ax, "figure") and callable(getattr(ax, "plot", None))):
        return ax
    raise WrongType(f"{name} must be a matplotlib Axes to draw into (or None for a new figure), not "
                    f"{type(ax).__name__} {ax!r:.40}.", argument=name)


def _run(run, name: str = "run") -> Run:
    if isinstance(run, Run):
        return run
    raise WrongType(f"{name} must be a Run (what lab.generate returns), not {type(run).__name__} {run!r:.40}.",
                    argument=name)


def _vae(vae):
    if vae is None or callable(getattr(vae, "decode", None)):
        return vae
    raise WrongType(f"vae must be a VAE to decode with (such as lab.pipe.vae), or None for the fast approximate "
                    f"preview, not {type(vae).__name__}.", argument="vae")


def _cell(cell) -> float:
    return checks.number("cell", cell, low=0.2, high=20, hint=" It is each picture's size in inches.")


def _schedule_names(names) -> list[str]:
    names = checks.names("names", names, example="['karras', 'uniform']")
    for name in names:
        try:
            S.resolve_schedule(name)
        except SdlabError as exc:
            raise InvalidArgument(f"names: {exc}", argument="names") from None
    return names


def _axes(ax, figsize=(7, 4.2)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _training(model) -> tuple[S.TrainingSchedule, str]:
    """The training schedule (``TrainingSchedule.of``) and the family (a lab's, else SD 1.x's) to plot with."""
    try:
        training = S.TrainingSchedule.of(model)
    except SdlabError as exc:
        raise WrongType(f"model: {exc}", argument="model") from None
    return training, getattr(model, "family", "sd1")


def _y(values: np.ndarray, y: str, training: S.TrainingSchedule) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if y == "sigma":
        return v
    if y == "log_sigma":
        with np.errstate(divide="ignore"):
            return np.log(v)
    if y == "timestep":
        return training.sigma_to_t(v)
    if y == "snr":
        return S.snr(v)
    if y == "log_snr":
        return S.log_snr(v)
    raise InvalidArgument(f"y must be one of {', '.join(Y_AXES)}, not {y!r}.")


_Y_LABEL = {"sigma": "sigma", "log_sigma": "log sigma", "timestep": "timestep t", "snr": "SNR = 1/sigma^2",
            "log_snr": "log SNR"}


def plot_schedules(names: Sequence[str] = DEFAULT_SCHEDULES, n: int = 20, model=None, *, y: str = "sigma",
                   x: str = "step", include_final: bool | None = None, ax=None, **params) -> Drawn:
    """Several schedule types over one model's sigma range. y: sigma, log_sigma, timestep, snr or log_snr;
    x: "step" (0..n) or "time" (normalised 0..1). The final 0 is left out where y cannot show it."""
    names, ax = _schedule_names(names), _ax(ax)
    n = checks.whole("n", n, low=1, high=checks.MAX_STEPS)
    checks.choice("y", y, Y_AXES)
    checks.choice("x", x, ("step", "time"))
    if include_final is not None:
        checks.flag("include_final", include_final)
    training, family = _training(model)
    table = schedule_table(names, n, training, family, **params)
    fig, ax = _axes(ax)
    keep_final = include_final if include_final is not None else y == "sigma"
    lines = {}
    for name, sig in table.items():
        values = sig if keep_final else sig[:-1]
        xs = np.arange(len(values)) if x == "step" else np.arange(len(values)) / n
        label = S.schedule_label(name)
        (lines[name],) = ax.plot(xs, _y(values, y, training), marker=".", label=label)
    ax.set_xlabel("step" if x == "step" else "normalised time (step / n)")
    if x == "step":
        _integer_steps(ax)
    ax.set_ylabel(_Y_LABEL[y])
    if y == "sigma":
        ax.set_yscale("log" if not keep_final else "linear")
    ax.set_title(f"{n} steps, sigma {training.sigma_min:.4f} .. {training.sigma_max:.2f}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return Drawn(fig, [ax], lines)


def plot_plan(scheduler, n: int, *, formula: bool = True, model=None, y: str = "sigma", ax=None,
              label: str | None = None) -> Drawn:
    """What a configured scheduler really does (from the scheduler itself), beside its schedule's formula."""
    ax = _ax(ax)
    checks.flag("formula", formula)
    checks.choice("y", y, Y_AXES)
    if label is not None:
        checks.text("label", label)
    n = checks.whole("n", n, low=1, high=checks.MAX_STEPS)
    try:
        p = scheduler_plan(scheduler, n)
    except SdlabError as exc:  # (a step count the scheduler class itself refuses: plan calls it steps)
        if exc.argument != "steps":
            raise
        raise InvalidArgument(f"n={n}: {exc}", argument="n") from None
    recipe = p.recipe
    training, _ = _training(model if model is not None else scheduler)
    fig, ax = _axes(ax)
    name = label or f"{recipe.sampler} (scheduler)"
    artists = {}
    keep = p.sigmas if y == "sigma" else p.sigmas[:-1]
    (artists["scheduler"],) = ax.plot(np.arange(len(keep)), _y(keep, y, training), "o", label=name)
    if formula and recipe.has_formula:  # the recipe's levels: what A1111 runs for this sampler and schedule
        sig = recipe.levels(n, training)
        keep_f = sig if y == "sigma" else sig[:-1]
        (artists["formula"],) = ax.plot(np.arange(len(keep_f)), _y(keep_f, y, training), "-",
                                        label=f"{recipe.schedule_label} formula (A1111's levels for {recipe.sampler})")
    ax.set_xlabel("step")
    _integer_steps(ax)
    ax.set_ylabel(_Y_LABEL[y])
    ax.set_title(f"{n} steps, {p.nfe} UNet calls")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return Drawn(fig, [ax], artists)


def plot_step_allocation(names: Sequence[str] = DEFAULT_SCHEDULES, n: int = 20, model=None, ax=None) -> Drawn:
    """How many of n steps each schedule spends at high noise (composition) and at low noise (detail)."""
    names, ax = _schedule_names(names), _ax(ax)
    n = checks.whole("n", n, low=1, high=checks.MAX_STEPS)
    training, family = _training(model)
    table = schedule_table(names, n, training, family)
    bands = band_labels()
    fig, ax = _axes(ax, figsize=(8, 4))
    width = 0.8 / len(table)
    bars = {}
    for k, (name, sig) in enumerate(table.items()):
        counts = steps_per_band(sig)
        bars[name] = ax.bar(np.arange(len(bands)) + k * width, counts, width, label=S.schedule_label(name))
    ax.set_xticks(np.arange(len(bands)) + 0.4 - width / 2, bands)
    ax.set_ylabel(f"steps (of {n}) starting in the band")
    ax.legend(fontsize="small", ncols=2)
    return Drawn(fig, [ax], bars)


def plot_run(run: Run, axes=None) -> Drawn:
    """Sigma per step, how much the x0 estimate still changes, and latent statistics per step."""
    stats = run_stats(_run(run))
    if axes is None:
        fig = Figure(figsize=(12, 3.6), layout="constrained")
        axes = fig.subplots(1, 3)
    else:
        if isinstance(axes, (str, bytes)) or not hasattr(axes, "__len__") or len(axes) != 3:
            raise WrongType(f"axes must be three matplotlib Axes (or None for a new figure), not {axes!r:.40}.",
                            argument="axes")
        for a in axes:
            _ax(a, "axes")
        fig = axes[0].figure
    idx = np.arange(1, len(stats.sigma) + 1)
    a = {}
    (a["sigma"],) = axes[0].plot(idx, stats.sigma, "o-")
    axes[0].set(title="sigma after each call", xlabel="UNet call", ylabel="sigma")
    (a["x0_change"],) = axes[1].plot(idx, stats.x0_change, "o-", color="C1")
    axes[1].set(title="change of the x0 estimate", xlabel="UNet call", ylabel="||dx0|| / ||x0||", yscale="log")
    (a["latent_std"],) = axes[2].plot(idx, stats.latent_std, "o-", color="C2", label="std")
    (a["latent_mean"],) = axes[2].plot(idx, stats.latent_mean, "o-", color="C3", label="mean")
    axes[2].set(title="latents x_t (VP-scaled)", xlabel="UNet call")
    axes[2].legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    _integer_steps(*axes)
    fig.suptitle(f"{run.scheduler_report.get('sampler')} / {run.scheduler_report.get('schedule')}, "
                 f"{run.settings.steps} steps, NFE {run.nfe}")
    return Drawn(fig, list(axes), a)


def _decode(record, target: str, family: str, vae=None) -> np.ndarray:
    t = record.view(target)
    return vae_rgb(vae, t) if vae is not None else approx_rgb(t, family)


def pick_steps(n: int, count: int = 6) -> list[int]:
    """count user steps spread over 1..n, always including the last."""
    n = checks.whole("n", n, low=1, high=checks.MAX_STEPS)
    count = checks.whole("count", count, low=1, high=checks.MAX_STEPS)
    return sorted({int(round(v)) for v in np.linspace(1, n, min(count, n))})


def step_grid(runs: Sequence[Run] | Sweep, steps: Sequence[int] | int = 6, *, target: str = "x0",
              labels: Sequence[str] | None = None, vae=None, cell: float = 1.6) -> Drawn:
    """Rows: runs (one per sampler, say); columns: chosen steps; each cell the x0 or x_t preview at that step,
    step numbers in the header (the figure of the Habr article 'Experiments with Schedulers')."""
    if isinstance(runs, Sweep):
        runs = [r for row in runs.runs for r in row if r is not None]
    elif isinstance(runs, Run):
        runs = [runs]
    if isinstance(runs, (str, bytes)) or not hasattr(runs, "__iter__"):
        raise WrongType(f"runs must be a list of Runs or a Sweep, not {type(runs).__name__}.", argument="runs")
    runs = [_run(r, "runs") for r in runs]
    if not runs:
        raise InvalidArgument("runs is empty: step_grid needs at least one run.", argument="runs")
    checks.choice("target", target, ("x0", "xt"))
    vae, cell = _vae(vae), _cell(cell)
    n = max(r.settings.steps for r in runs)
    if isinstance(checks._scalar(steps), (int, float)) and not checks.is_flag(steps):
        cols = pick_steps(n, checks.whole("steps", steps, low=1, high=checks.MAX_STEPS))
    else:
        cols = checks.wholes("steps", steps, low=1, high=n, hint=f" The runs have {n} steps.")
    if labels is not None:
        labels = checks.names("labels", labels, example="['Euler', 'DPM++ 2M']")
        if len(labels) != len(runs):
            raise InvalidArgument(f"labels has {len(labels)} names for {len(runs)} runs: give one per run.",
                                  argument="labels")
    fig = Figure(figsize=(cell * len(cols) + 1.8, cell * len(runs) + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(runs), len(cols), squeeze=False))
    images = [[None] * len(cols) for _ in runs]
    labels = labels if labels is not None else [
        f"{r.scheduler_report.get('sampler')}\n{r.scheduler_report.get('schedule')}, NFE {r.nfe}" for r in runs]
    for i, run in enumerate(runs):
        per_step = last_record_per_step(run)
        # A1111 prompt editing: say under a cell where the prompt (or the negative prompt) in effect changed
        edited = [neg for neg in (False, True) if len(run.prompt_changes(neg)) > 1]
        previous = None
        for j, k in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if k in per_step:
                images[i][j] = ax.imshow(_decode(per_step[k], target, run.family, vae), interpolation="nearest")
                at = run.records.index(per_step[k])
                shown = [f"{'negative' if neg else 'prompt'}: {run.prompt_shown(at, neg)}" for neg in edited]
                if shown and shown != previous:
                    ax.set_xlabel("\n".join(textwrap.fill(line, 28) for line in shown), fontsize="x-small",
                                  color="#06c")
                previous = shown
            if i == 0:
                ax.set_title(f"step {k}", color="#c00", fontsize="medium")
            if j == 0:
                ax.set_ylabel(labels[i], fontsize="small")
    fig.suptitle(f"{'x0 (predicted clean image)' if target == 'x0' else 'x_t (latents)'} by step")
    return Drawn(fig, list(axes.ravel()), {"images": images, "steps": cols, "labels": labels})


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell_detail(result: Sweep, i: int, j: int, run: Run) -> str:
    """What a cell ran that its column and row headers do not already say: the resolved sampler, the
    schedule and the UNet calls, minus any of them a header shows."""
    rep = run.scheduler_report
    shown = {_value_text(result.x_values[j]).casefold()}
    if result.y is not None:
        shown.add(_value_text(result.y_values[i]).casefold())
    parts = [str(rep.get("sampler")), S.schedule_label(rep.get("schedule"))]
    parts = [p for p in parts if p.casefold() not in shown]
    return " / ".join(parts + [f"NFE {run.nfe}"]) if parts else f"NFE {run.nfe}"


def xy_plot(result: Sweep, *, cell: float = 2.0, vae=None, target: str = "image") -> Drawn:
    """A1111's X/Y plot: final images of a sweep; each cell says the sampler, schedule and NFE it used."""
    if not isinstance(result, Sweep):
        raise WrongType(f"result must be a Sweep (what sdlab.sweep returns), not {type(result).__name__}.",
                        argument="result")
    checks.choice("target", target, ("image", "x0", "xt"))
    vae, cell = _vae(vae), _cell(cell)
    rows, cols = result.shape
    fig = Figure(figsize=(cell * cols + 1.5, cell * rows + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    images = [[None] * cols for _ in range(rows)]
    titles = [[None] * cols for _ in range(rows)]
    details = [[None] * cols for _ in range(rows)]
    for i in range(rows):
        for j in range(cols):
            ax, run = axes[i, j], result.runs[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if run is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                titles[i][j] = "n/a"
            else:
                img = np.asarray(run.image.convert("RGB")) if target == "image" else \
                    _decode(run.records[-1], target, run.family, vae)
                images[i][j] = ax.imshow(img)
                rep = run.scheduler_report
                titles[i][j] = f"{rep['sampler']} / {rep['schedule']}, NFE {run.nfe}"
                details[i][j] = _cell_detail(result, i, j, run)
            if i == 0:
                ax.set_title(f"{result.x} = {_value_text(result.x_values[j])}", fontsize="medium")
            if j == 0 and result.y is not None:
                ax.set_ylabel(f"{result.y} = {_value_text(result.y_values[i])}", fontsize="medium")
    shown = {d for row in details for d in row if d is not None}
    if len(shown) == 1:  # every cell ran the same: said once, over the grid
        fig.suptitle(shown.pop(), fontsize="medium")
    else:
        for i in range(rows):
            for j in range(cols):
                if details[i][j] is not None:
                    axes[i, j].set_xlabel(details[i][j], fontsize="small")
    return Drawn(fig, list(axes.ravel()), {"images": images, "titles": titles})


def plot_accuracy(result, ax=None) -> Drawn:
    """A sampler study (``sdlab.sampler_accuracy``): error against NFE, log-log, one line per sampler and
    schedule, its fitted slope (``result.slope``) in the legend, the reference's own error in the title."""
    from .accuracy import Accuracy

    if not isinstance(result, Accuracy):
        raise WrongType(f"result must be what sdlab.sampler_accuracy returns, not {type(result).__name__}.",
                        argument="result")
    fig, ax = _axes(_ax(ax), figsize=(7.5, 5))
    lines = {}
    groups = result.lines()
    colours = {s: f"C{i % 10}" for i, s in enumerate(dict.fromkeys(s for s, _ in groups))}
    styles = {sch: ("-", "--", ":", "-.")[i % 4] for i, sch in enumerate(dict.fromkeys(sch for _, sch in groups))}
    for (sampler, schedule), rows in groups.items():
        try:
            label = f"{sampler} / {S.schedule_label(schedule)} (slope {result.slope(sampler, schedule):.2f})"
        except SdlabError:
            label = f"{sampler} / {S.schedule_label(schedule)}"
        (lines[sampler, schedule],) = ax.loglog([r.nfe for r in rows], [r.error for r in rows], marker="o",
                                                ls=styles[schedule], color=colours[sampler], label=label)
    ax.set_xlabel("NFE (UNet calls)")
    ax.set_ylabel("error at the last noise level / sigma")
    ax.set_title(f"error against the probability-flow ODE (reference error <= {result.reference_error:.0e})")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return Drawn(fig, [ax], lines)


def cfg_sweep(lab, scales: Sequence[float] = (1.0, 3.0, 7.0, 12.0, 20.0), *, y: str | None = None,
              y_values: Sequence[Any] = (None,), **settings) -> Drawn:
    """Final images across CFG scales at a fixed seed (optionally a second axis, e.g. y="sampler"); the
    sweep itself is in ``drawn.artists["sweep"]``."""
    from .analysis import sweep

    scales = checks.reals("scales", scales, low=0, max_size=100).tolist()
    result = sweep(lab, x="cfg", x_values=scales, y=y, y_values=y_values, **settings)
    drawn = xy_plot(result)
    drawn.artists["sweep"] = result
    return drawn


class Animation(type(Path())):
    """The path animate_run wrote (a pathlib.Path), which a notebook shows as the animation itself."""

    def _repr_html_(self) -> str:
        import base64

        data = base64.b64encode(self.read_bytes()).decode("ascii")
        if self.suffix.lower() == ".mp4":
            return (f'<video src="data:video/mp4;base64,{data}" controls autoplay loop muted '
                    f'title="{self.name}"></video>')
        return f'<img src="data:image/gif;base64,{data}" alt="{self.name}" title="{self.name}"/>'


def animate_run(run: Run, path, *, target: str = "x0", fps: int = 6, size: int = 256, vae=None) -> Path:
    """An animation of a run, one frame per step: GIF with Pillow, MP4 with imageio-ffmpeg (pip install
    'sdlab[video]'). Returns the file's path, which a notebook cell shows as the animation."""
    from PIL import Image

    run, vae = _run(run), _vae(vae)
    checks.choice("target", target, ("x0", "xt"))
    fps = checks.number("fps", fps, low=0.1, high=100, hint=" It is in frames a second.")
    size = checks.whole("size", size, low=8, high=4096, hint=" It is the frame's longer side in pixels.")
    path = checks.output_file("path", path, suffix=(".gif", ".mp4"))
    frames = []
    for rec in last_record_per_step(run).values():
        img = Image.fromarray(_decode(rec, target, run.family, vae))
        scale = max(1, size // max(img.size))
        frames.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    if not frames:
        raise InvalidArgument("run has no recorded steps to animate (it ran with record=False).", argument="run")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        checks.write_atomically(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True,
                                                                 append_images=frames[1:],
                                                                 duration=max(1, int(1000 / fps)), loop=0))
    elif suffix == ".mp4":
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401  (ships its own ffmpeg binary)
        except ImportError as exc:
            raise MissingDependency("Writing MP4 needs imageio with ffmpeg: pip install 'sdlab[video]' "
                              "(imageio, imageio-ffmpeg); or save as .gif.") from exc
        even = [np.asarray(f.resize((max(16, f.width // 16 * 16), max(16, f.height // 16 * 16)))) for f in frames]
        imageio.mimwrite(path, even, fps=fps, codec="libx264", quality=8, macro_block_size=16)
    return Animation(path)


def _overlay(ax, picture: np.ndarray | None, heat: np.ndarray, alpha: float = 0.55):
    """A word's map over a picture: the picture in grey, the map in a warm colour scale on top."""
    h, w = heat.shape
    if picture is not None:
        grey = picture.astype(np.float64).mean(-1) / 255.0
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0), interpolation="nearest")
    return ax.imshow(heat, cmap="inferno", alpha=alpha if picture is not None else 1.0, vmin=0,
                     vmax=max(float(heat.max()), 1e-12), extent=(0, w, h, 0), interpolation="bilinear")


def _word_grid(rows: list[str], cols: list[int], cell_map, pictures, title: str, col_title, cell: float) -> Drawn:
    fig = Figure(figsize=(max(cell * len(cols) + 1.2, 4.8), cell * len(rows) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), len(cols), squeeze=False))
    images = [[None] * len(cols) for _ in rows]
    for i, word in enumerate(rows):
        for j, k in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            images[i][j] = _overlay(ax, pictures.get(k), cell_map(word, k))
            if i == 0:
                ax.set_title(col_title(k), fontsize="small")
            if j == 0:
                ax.set_ylabel(word, fontsize="medium")
    fig.suptitle(title)
    return Drawn(fig, list(axes.ravel()), {"images": images, "words": rows, "steps": cols})


def _x0_pictures(run: Run, steps: Sequence[int]) -> dict[int, np.ndarray]:
    per_step = last_record_per_step(run)
    out = {}
    for k in steps:
        rec = per_step.get(k)
        if rec is not None and rec.x0 is not None:
            out[k] = approx_rgb(rec.view("x0"), run.family)
    return out


def attention_grid(run: Run, words: Sequence[str | int] | None = None, steps: Sequence[int] | int = 6, *,
                   cell: float = 1.6) -> Drawn:
    """Rows: words of the prompt; columns: steps; each cell where the word is attended to at that step (DAAM's
    aggregate, ``run.attention.map``), over the step's x0 preview. The run must have recorded attention."""
    run = _run(run)
    if run.attention is None:
        raise InvalidArgument("This run recorded no attention maps: generate with attention=True.", argument="run")
    maps = run.attention
    if words is None:
        words = list(dict.fromkeys(maps.tokens))
    else:
        if isinstance(words, (str, int)) and not isinstance(words, bool):
            words = [words]
        if not isinstance(words, (list, tuple)) or not words:
            raise WrongType(f"words must be a list of the prompt's words (or token indices), not {words!r:.40}.",
                            argument="words")
        for w in words:
            try:
                maps._index(w)  # an unknown word is refused, naming the prompt's tokens
            except InvalidArgument as exc:
                raise InvalidArgument(f"words: {exc}", argument="words") from None
    n = run.settings.steps
    cols = pick_steps(n, checks.whole("steps", steps, low=1, high=checks.MAX_STEPS)) if isinstance(
        checks._scalar(steps), int) and not checks.is_flag(steps) else checks.wholes("steps", steps, low=1, high=n)
    return _word_grid([str(w) for w in words], cols, lambda w, k: maps.map(_as_word(w, maps), step=k),
                      _x0_pictures(run, cols), "where each word is attended to (cross-attention, DAAM)",
                      lambda k: f"step {k}", _cell(cell))


def _as_word(w: str, maps):
    return int(w) if w.isdigit() and w not in maps.tokens else w


def influence_grid(influence, run: Run | None = None, *, cell: float = 1.6) -> Drawn:
    """Rows: words; columns: the steps ``lab.word_influence`` looked at; each cell what taking the word out of
    the prompt changes in the x0 prediction there (over the run's x0 preview when ``run`` is given), each
    column titled with its noise level."""
    from .influence import Influence

    if not isinstance(influence, Influence):
        raise WrongType(f"influence must be what lab.word_influence returns, not {type(influence).__name__}.",
                        argument="influence")
    if run is not None:
        run = _run(run)
        if influence.prompt is not None and run.settings.prompt != influence.prompt:
            raise InvalidArgument("run is not the run this influence was computed from (its prompt differs); pass "
                                  "that run, or run=None.", argument="run")
    pictures = _x0_pictures(run, influence.steps) if run is not None else {}
    return _word_grid(influence.words, influence.steps, influence.map, pictures,
                      "what each word changes in the x0 prediction (word influence)",
                      lambda k: f"step {k}, sigma {influence.sigmas[k]:.2g}", _cell(cell))
