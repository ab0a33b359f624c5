"""Numbers about runs and schedules, for plots and lessons. Pure functions over core objects."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from . import checks
from .errors import InvalidArgument, SdlabError, WrongType
from . import noise_schedules as S
from .generation import prepare
from .notices import notice
from .records import Run, StepRecord
from .settings import ALIASES, SETTING_NAMES, Settings

SIGMA_BANDS = (float("inf"), 5.0, 1.0, 0.2, 0.0)  # high noise (composition) ... low noise (detail)


def band_labels(edges: Sequence[float] = SIGMA_BANDS) -> list[str]:
    """Labels of the sigma bands between ``edges`` (high to low): "sigma > 5", "1 - 5", ..., "< 0.2"."""
    out = []
    for hi, lo in zip(edges, edges[1:]):
        out.append(f"sigma > {lo:g}" if hi == float("inf") else f"< {hi:g}" if lo == 0 else f"{lo:g} - {hi:g}")
    return out


def steps_per_band(sigmas: np.ndarray, edges: Sequence[float] = SIGMA_BANDS) -> list[int]:
    """How many steps start in each sigma band (edges high to low): where a schedule spends its steps."""
    starts = np.asarray(sigmas, dtype=np.float64)[:-1]
    return [int(np.sum((starts <= hi) & (starts > lo))) for hi, lo in zip(edges, edges[1:])]


def last_record_per_step(run: Run) -> dict[int, StepRecord]:
    """The record that completes each user step (Heun-type samplers record two per step)."""
    out: dict[int, StepRecord] = {}
    for r in run.records:
        out[r.step] = r
    return out


@dataclass(frozen=True)
class RunStats:
    steps: np.ndarray  # user step of each record
    sigma: np.ndarray
    x0_change: np.ndarray  # ||x0_k - x0_{k-1}|| / ||x0_k|| (nan for the first)
    latent_mean: np.ndarray
    latent_std: np.ndarray
    nfe: np.ndarray


def run_stats(run: Run) -> RunStats:
    if not run.records:
        raise InvalidArgument("This run has no records.")
    x0 = [r.view("x0") for r in run.records]
    change = [float("nan")] + [float((b - a).norm() / b.norm().clamp_min(1e-12)) for a, b in zip(x0, x0[1:])]
    lat = [r.view("xt") for r in run.records]
    return RunStats(steps=np.array([r.step for r in run.records]),
                    sigma=np.array([np.nan if r.sigma is None else r.sigma for r in run.records]),
                    x0_change=np.array(change), latent_mean=np.array([float(t.mean()) for t in lat]),
                    latent_std=np.array([float(t.std()) for t in lat]), nfe=np.array([r.nfe for r in run.records]))


def cfg_parts(record: StepRecord, cfg: float) -> dict[str, torch.Tensor]:
    """The pieces of classifier-free guidance at one step: eps = eps_u + s (eps_c - eps_u)."""
    if record.noise_cond is None:
        raise InvalidArgument("This record has no noise predictions (record=False).")
    cond = record.noise_cond.float()
    if record.noise_uncond is None:  # cfg <= 1: the pipeline made one prediction
        return {"cond": cond, "combined": cond}
    uncond = record.noise_uncond.float()
    guidance = cond - uncond
    return {"uncond": uncond, "cond": cond, "guidance": guidance, "combined": uncond + cfg * guidance}


def tensor_summary(t: torch.Tensor) -> dict[str, float]:
    t = t.float()
    return {"mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()), "max": float(t.max()),
            "norm": float(t.norm())}


@dataclass
class Sweep:
    """A grid of runs: rows along ``y``, columns along ``x`` (A1111's X/Y plot)."""

    x: str
    x_values: list
    y: str | None
    y_values: list
    runs: list[list[Run | None]]  # [row][column]; None where a cell could not run (skip_invalid) or failed
    errors: dict[tuple[int, int], str]
    interrupted: bool = False  # stopped before every cell came back (what came back is kept)
    _thread: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.runs), len(self.runs[0]) if self.runs else 0

    @property
    def finished(self) -> int:
        """Cells that came back so far (runs and errors)."""
        return sum(r is not None for row in self.runs for r in row) + len(self.errors)

    @property
    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> "Sweep":
        """For ``sweep(..., wait=False)``: block until every cell is back (or ``timeout``)."""
        if timeout is not None:
            timeout = checks.number("timeout", timeout, low=0, high=threading.TIMEOUT_MAX, hint=" It is in seconds; None waits for every cell.")
        if self._thread is not None:
            self._thread.join(timeout)
        return self


def sweep(lab, base: Settings | None = None, *, x: str, x_values: Sequence[Any], y: str | None = None,
          y_values: Sequence[Any] = (None,), skip_invalid: bool = False, executor=None, records: bool = False,
          wait: bool = True, progress: bool = True, **settings) -> Sweep:
    """Run every (y, x) combination of two settings at a fixed seed.

    x / y: a Settings field ("sampler", "schedule", "steps", "cfg", "seed", ...). Every cell is prepared
    (checked, names resolved) before the first run, so a bad combination fails fast (or, with
    skip_invalid, leaves that cell empty); each run's settings hold the names it ran with.

    records: keep each run's per-step tensors (for step grids, x0 statistics); without it, the step records
      keep only their metadata (step, sigma, timestep, NFE, time) and each run its final latents and images.
    executor: a ``dask.distributed.Client`` (or any ``concurrent.futures.Executor``) to run the cells on.
      The model goes to the workers as a reference and is loaded there once (see sdlab.distributed); each
      cell comes back in its place whatever the order, bit-identical to a local run.
    With or without an executor a sweep behaves the same: one progress bar over the cells (the pipeline's
    own bars are off meanwhile); a cell that fails at run time becomes an error cell (``sweep.errors``,
    "Type: message") and the others complete; ``wait=False`` returns at once and the grid fills in as cells
    finish (``sweep.finished``, ``sweep.wait()``); interrupted, the sweep keeps what came back
    (``sweep.interrupted``). On a cluster, a worker that dies has its cells retried.
    """
    checks.lab("lab", lab)
    if base is not None and not isinstance(base, Settings):
        raise WrongType(f"base must be sdlab.Settings (or None), not {type(base).__name__}.", argument="base")
    x = _axis("x", x)
    if y is not None:
        y = _axis("y", y)
        if y == x:
            raise InvalidArgument(f"x and y are both {x!r}: a grid needs two different settings (or y=None).",
                                  argument="y")
    x_values, y_values = _values("x_values", x_values), _values("y_values", y_values)
    for name, flag in (("skip_invalid", skip_invalid), ("records", records), ("wait", wait), ("progress", progress)):
        checks.flag(name, flag)
    checks.executor("executor", executor)
    base = (base or Settings()).updated(**settings)
    if base.seed is None:
        base = replace(base, seed=0)
    cells = {}
    errors: dict[tuple[int, int], str] = {}
    for i, yv in enumerate(y_values):
        for j, xv in enumerate(x_values):
            cell = base.updated(**{x: xv}) if y is None else base.updated(**{x: xv, y: yv})
            try:
                cells[i, j] = prepare(lab, cell)
            except SdlabError as exc:
                if not skip_invalid:
                    where = (f"The cell {x}={xv!r}, {y}={yv!r} (x_values, y_values)" if y is not None
                             else f"The cell {x}={xv!r} (x_values)")
                    raise InvalidArgument(f"{where} cannot run: {exc} (skip_invalid=True leaves such cells empty)",
                                          argument=exc.argument or "x_values") from exc
                errors[i, j] = str(exc)
    runs: list[list[Run | None]] = [[None] * len(x_values) for _ in y_values]
    result = Sweep(x=x, x_values=list(x_values), y=y, y_values=list(y_values), runs=runs, errors=errors)
    from . import distributed

    def deliver(key, value):
        if isinstance(value, distributed.CellError):
            errors[key] = str(value)
        else:
            runs[key[0]][key[1]] = distributed.unpack(value)

    label = f"sweep {x}" + (f" x {y}" if y else "")
    if executor is None:  # here, one cell after another, with the same records, progress and error cells
        def gather():
            result.interrupted = not distributed.run_here(lab, cells, {"record": records}, deliver,
                                                          progress=progress, label=label)
    else:
        distributed.check_workers(executor, lab)
        tasks = {key: (distributed.run_cell, lab, cell.settings, {"record": records}, records)
                 for key, cell in cells.items()}

        def gather():
            result.interrupted = not distributed.collect(executor, tasks, deliver, progress=progress, label=label)

    if wait:
        gather()
        if result.interrupted:
            notice(f"sdlab: the sweep was interrupted; {result.finished} of {len(cells) + len(errors)} cells are "
                   "in the result.")
    else:
        result._thread = threading.Thread(target=gather, daemon=True, name="sdlab-sweep")
        result._thread.start()
    return result



def variations(lab, base: Settings | None = None, *, subseed: int, strengths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
               seeds: Sequence[int] | None = None, records: bool = False, progress: bool = True, **settings) -> Sweep:
    """A1111's variation seeds as a row of pictures: the noise slerped from the seed's (strength 0) to
    ``subseed``'s (1), everything else fixed (``sdlab.rng.slerp``); ``seeds``: one row per seed. A sweep over
    ``subseed_strength`` (show it with ``plots.xy_plot``)."""
    checks.lab("lab", lab)
    if base is not None and not isinstance(base, Settings):
        raise WrongType(f"base must be sdlab.Settings (or None), not {type(base).__name__}.", argument="base")
    subseed = checks.whole("subseed", subseed, low=0, high=2 ** 63 - 1, hint=" It is the variation seed.")
    if seeds is not None:
        seeds = checks.wholes("seeds", seeds, low=0, high=2 ** 63 - 1, hint=" One row of pictures per seed.")
    strengths = [checks.number("strengths", v, low=0, high=1, hint=" Each is a subseed_strength from 0 to 1.")
                 for v in _values("strengths", strengths)]
    base = (base or Settings()).updated(**settings, subseed=subseed)
    if seeds is None:
        return sweep(lab, base, x="subseed_strength", x_values=strengths, records=records, progress=progress)
    return sweep(lab, base, x="subseed_strength", x_values=strengths, y="seed", y_values=seeds, records=records,
                 progress=progress)

def _axis(name: str, value: Any) -> str:
    """A sweep axis: a Settings field (or diffusers' / A1111's name for one), as the field's name."""
    if isinstance(value, str) and ALIASES.get(value, value) in SETTING_NAMES - {"origin", "extra"}:
        return ALIASES.get(value, value)
    raise InvalidArgument(f"{name} must name a setting to vary, such as 'cfg', 'sampler', 'schedule', 'steps' or "
                          f"'seed', not {value!r:.60}.", argument=name)


def _values(name: str, value: Any) -> list:
    """The values along an axis: a list (a bare string is one value, never its letters)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes) or not hasattr(value, "__iter__"):
        raise WrongType(f"{name} must be a list of values, not {type(value).__name__} {value!r:.60}.", argument=name)
    values = list(value)
    if not values:
        raise InvalidArgument(f"{name} is empty: give at least one value.", argument=name)
    return values


def schedule_table(names: Sequence[str], n: int, model: S.TrainingSchedule | None = None, family: str = "sd1",
                   **params) -> dict[str, np.ndarray]:
    """Sigmas of several schedule types for one model's range (parameters go to the types that take them)."""
    out = {}
    for name in names:
        key = S.resolve_schedule(name)
        own = {k: v for k, v in params.items() if k in S.SCHEDULES[key].params}
        out[key] = S.sigmas(key, n, model=model, family=family, **own)
    return out
