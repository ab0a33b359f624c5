"""How accurate is each sampler? Its run against a high-accuracy solution of the probability-flow ODE.

Every deterministic sampler integrates the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma
(Karras et al. 2022, eq. 3, with x = x0 + sigma eps and D the denoiser, guidance included) from its
starting noise down to its last noise level. ``sampler_accuracy`` runs each (sampler, schedule, steps)
through the real pipeline and compares it with a reference solution from the very same starting point.

What is compared: the latents at the run's last nonzero noise level sigma_N, as RMS(x - x_ref) / sigma_N
(the error in units of the noise still left; sigma_N is sigma_min = 0.029 for most schedules). The
final step to sigma = 0 returns the denoiser's x0, which for the toy model's exact denoiser of finitely
many pictures snaps to one picture: the final latents are either exactly the reference's picture or
another one (``final_error`` says which), so they cannot show an order of convergence; the state
before the snap can.

The reference: on the toy model (``sdlab.toy.is_teaching_model``), scipy's DOP853 (8th-order Runge-Kutta, Hairer et al.)
on the float64 exact denoiser in log sigma, rtol 1e-10; its error is estimated as the difference to a
solve with 100x looser tolerances. On a trained model, Heun's method (2nd order) with
``reference_steps`` steps evenly spaced in log sigma, its error estimated by Richardson's rule from a
solve with half as many steps (|x_n - x_{n/2}| / 3).

Stochastic samplers (Euler a, DPM2 a, DPM++ 2M SDE, DDPM, LCM) are refused: they sample the reverse SDE,
whose result differs from the ODE's however many steps they take.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import checks
from .errors import GenerationError, InvalidArgument, SdlabError, WrongType
from . import conventions as C
from . import noise_schedules as S
from .analysis import last_record_per_step
from .denoiser import Denoiser
from .generation import initial_noise, prepare
from .records import Run
from .sampler_catalog import CATALOG, parse_sampler, resolve
from .settings import Settings


@dataclass(frozen=True)
class AccuracyRow:
    sampler: str
    schedule: str
    steps: int
    nfe: int  # UNet calls
    error: float  # RMS(x - x_ref) / sigma_end at the last nonzero noise level
    final_error: float  # RMS(final latents - reference's) / RMS(reference's)
    sigma_end: float  # the last nonzero noise level, where ``error`` is measured
    seconds: float

    @property
    def same_picture(self) -> bool:
        """Whether the run's final latents are the reference's (on the teaching model: the same one of its
        pictures). The exact denoiser's last step snaps towards one picture, so final_error is either a
        residue of the snap to the same picture or the distance to another one, and two of the teaching
        model's 432 pictures are at least 0.092 of a picture's RMS apart (measured over its dataset)."""
        return self.final_error < SAME_PICTURE


SAME_PICTURE = 0.046  # half the smallest distance between two teaching-model pictures (see same_picture)


@dataclass(frozen=True)
class Reference:
    """How one reference solution was made and how accurate it is (same units as ``error``)."""

    method: str
    sigma_start: float
    sigma_end: float
    estimated_error: float
    evaluations: int  # denoiser calls


@dataclass
class Accuracy:
    """The rows of a sampler study, the references they were measured against, and what was skipped."""

    rows: list[AccuracyRow]
    references: list[Reference]
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    settings: Settings | None = None
    errors: dict[tuple[str, str, int], str] = field(default_factory=dict)  # cells that failed (their error)
    exact: bool = False  # measured on an exact denoiser (the teaching model): final pictures are same or other

    def lines(self) -> dict[tuple[str, str], list[AccuracyRow]]:
        """Rows grouped by (sampler, schedule), in order of NFE."""
        out: dict[tuple[str, str], list[AccuracyRow]] = {}
        for r in self.rows:
            out.setdefault((r.sampler, r.schedule), []).append(r)
        return {k: sorted(v, key=lambda r: r.nfe) for k, v in out.items()}

    @property
    def reference_error(self) -> float:
        """The largest estimated error of the references: errors below it are not resolved."""
        return max((r.estimated_error for r in self.references), default=0.0)

    def slope(self, sampler: str, schedule: str = S.AUTOMATIC, points: int = 3) -> float:
        """d log(error) / d log(NFE): a least-squares line through the ``points`` largest step counts whose
        error is above 10x the reference's (the asymptotic regime; about -1 for a first-order sampler,
        -2 for a second-order one, near 0 where something other than the step size limits the error)."""
        spec, concrete = resolve(sampler, schedule)
        points = checks.whole("points", points, low=2)
        rows = [r for r in self.lines().get((spec.name, concrete), []) if r.error > 10 * self.reference_error]
        rows = rows[-points:]
        if len(rows) < 2:
            raise InvalidArgument(f"Fewer than two resolved rows for {spec.name} / {concrete}; measure more step counts.")
        return float(np.polyfit(np.log([r.nfe for r in rows]), np.log([r.error for r in rows]), 1)[0])

    def _final(self, row: AccuracyRow) -> str:
        """The ``final`` column: on an exact denoiser whether the run drew the reference's picture ("same")
        or another ("other"); on a trained model the relative distance of the final latents."""
        if self.exact:
            return "same" if row.same_picture else "other"
        return f"{row.final_error:.2e}"

    def __repr__(self) -> str:
        head = f"{'sampler':12s} {'schedule':13s} {'steps':>5s} {'NFE':>5s} {'error':>10s} {'final':>9s}"
        lines = [head] + [f"{r.sampler:12s} {r.schedule:13s} {r.steps:5d} {r.nfe:5d} {r.error:10.3e} {self._final(r):>9s}"
                          for rows in self.lines().values() for r in rows]
        lines.append(f"reference error <= {self.reference_error:.1e} ({self.references[0].method if self.references else '-'})")
        lines += [f"skipped {a} / {b}: {why}" for (a, b), why in self.skipped.items()]
        return "\n".join(lines)


def deterministic_samplers() -> list[str]:
    return [s.name for s in CATALOG.values() if not s.stochastic]


def sampler_accuracy(lab, samplers: Sequence[str] = ("Euler", "Heun", "DPM++ 2M"), schedules: Sequence[str] = ("automatic",),
                     steps: Sequence[int] = (5, 10, 20, 40), *, prompt: str = "", negative_prompt: str = "",
                     seed: int = 0, cfg: float = 7.0, width: int | None = None, height: int | None = None,
                     reference_steps: int = 200, executor=None, progress: bool = True) -> Accuracy:
    """One row per (sampler, schedule, steps): NFE and the error against a reference solution of the
    probability-flow ODE from the same starting noise (see the module docstring for what is measured
    and how the reference is made). Combinations a sampler cannot follow are skipped and listed in
    ``.skipped``; stochastic samplers and bad settings raise before any work.

    executor: a ``dask.distributed.Client`` or ``concurrent.futures.Executor`` to run the sampler runs on
    (see sdlab.sweep); the references are solved here. A run that fails there is listed in ``.errors``."""
    checks.lab("lab", lab)
    samplers = checks.names("samplers", samplers, example="['Euler', 'DPM++ 2M']")
    schedules = checks.names("schedules", schedules, example="['automatic', 'Karras']")
    steps = checks.wholes("steps", steps, low=2, high=checks.MAX_STEPS,
                          hint=" The error is measured before the last step.")
    reference_steps = checks.whole("reference_steps", reference_steps, low=2, high=checks.MAX_STEPS)
    prompt, negative_prompt = checks.text("prompt", prompt), checks.text("negative_prompt", negative_prompt)
    checks.flag("progress", progress)
    checks.executor("executor", executor)
    base = Settings(prompt=prompt, negative_prompt=negative_prompt, seed=seed, cfg=cfg, width=width, height=height)
    cells = []
    skipped: dict[tuple[str, str], str] = {}
    seen: set[tuple[str, str]] = set()  # "automatic" and the schedule it stands for are one line
    for name in samplers:
        try:
            spec, legacy = parse_sampler(name)
        except SdlabError as exc:
            raise InvalidArgument(f"samplers: {exc}", argument="samplers") from None
        if spec.stochastic:
            raise InvalidArgument(f"{spec.name} is stochastic: it samples the reverse SDE, whose result differs from the "
                             "probability-flow ODE's however many steps it takes, so its error against the ODE would not "
                             f"fall with NFE. sampler_accuracy measures ODE solvers: {', '.join(deterministic_samplers())}.")
        for schedule in ([legacy] if legacy else schedules):
            try:
                S.resolve_schedule(schedule)
            except SdlabError as exc:
                raise InvalidArgument(f"schedules: {exc}", argument="schedules") from None
            try:
                _, concrete = resolve(spec.name, schedule)
            except SdlabError as exc:
                skipped[(spec.name, S.resolve_schedule(schedule))] = str(exc)
                continue
            if (spec.name, concrete) in seen:
                continue
            seen.add((spec.name, concrete))
            for n in steps:
                cells.append(prepare(lab, base.updated(sampler=spec.name, schedule=concrete, steps=n)))
    if not cells:
        raise InvalidArgument(f"Nothing to measure: every combination was skipped ({'; '.join(skipped.values())}).")
    denoiser = Denoiser(lab, prompt, negative_prompt, cfg)
    references: dict[tuple, tuple[torch.Tensor, Reference]] = {}
    measured: dict[int, AccuracyRow] = {}
    keys: dict[int, tuple] = {}  # which reference each row was measured against
    errors = {}
    from . import distributed

    def deliver(k, value):  # measured as it comes, so the one progress bar counts the reference solves too
        if isinstance(value, distributed.CellError):
            s = cells[k].settings
            errors[(s.sampler, s.schedule, s.steps)] = str(value)
        else:
            measured[k], keys[k] = _measure(lab, value, value.seconds, denoiser, references, reference_steps)

    options = {"record_dtype": torch.float32}
    if executor is None:
        distributed.run_here(lab, dict(enumerate(cells)), options, deliver, progress=progress,
                             label="sampler accuracy")
    else:
        distributed.check_workers(executor, lab)
        tasks = {k: (distributed.run_cell, lab, cell.settings, options, True) for k, cell in enumerate(cells)}
        distributed.collect(executor, tasks, deliver, progress=progress, label="sampler accuracy")
    rows = [measured[k] for k in sorted(measured)]  # in the order asked for, whatever order they came back in
    first_use: dict[tuple, int] = {}
    for k in sorted(keys):
        first_use.setdefault(keys[k], k)
    return Accuracy(rows=rows, references=[references[key][1] for key in sorted(references, key=first_use.get)],
                    skipped=skipped, settings=base, errors=errors, exact=denoiser.exact)


def _measure(lab, run: Run, seconds: float, denoiser: Denoiser, references: dict,
             reference_steps: int) -> tuple[AccuracyRow, tuple]:
    cell = run.settings
    ve = run.plan.variance_exploding
    levels = run.plan.sigmas
    end = cell.steps - 1 if levels[-1] == 0 else cell.steps  # the last nonzero level
    sigma_end = float(levels[end])
    record = last_record_per_step(run)[end]
    state = C.sample_as_ve(record.latents.double(), sigma_end, ve)
    # the pipeline starts from noise x init_noise_sigma, in the sample's form: as x0 + sigma eps, that is
    # sigma_0 x noise where a sampler starts as k-diffusion does (1 / alpha_0 for diffusers' own VP start)
    start_scale = float(C.sample_as_ve(run.plan.init_noise_sigma, float(levels[0]), ve))
    key = (round(float(levels[0]), 10), round(start_scale, 10), round(sigma_end, 10))
    if key not in references:
        start = initial_noise(lab, cell).double().cpu() * start_scale
        references[key] = _reference(denoiser, start, float(levels[0]), sigma_end, reference_steps)
    x_ref, _ = references[key]
    error = _rms(state - x_ref) / sigma_end
    final_ref = denoiser.x0(x_ref, sigma_end) if levels[-1] == 0 else x_ref
    final = C.sample_as_ve(run.final_latents.double(), sigma_end, ve or levels[-1] == 0)
    return AccuracyRow(sampler=cell.sampler, schedule=cell.schedule, steps=cell.steps, nfe=run.nfe, error=error,
                       final_error=_rms(final - final_ref) / max(_rms(final_ref), 1e-30), sigma_end=sigma_end,
                       seconds=seconds), key


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def _reference(denoiser: Denoiser, start: torch.Tensor, sigma_start: float, sigma_end: float,
               steps: int) -> tuple[torch.Tensor, Reference]:
    calls = denoiser.calls
    if denoiser.exact:  # the teaching model (sdlab.toy.is_teaching_model)
        tight = _dop853(denoiser, start, sigma_start, sigma_end, rtol=1e-10, atol=1e-12)
        loose = _dop853(denoiser, start, sigma_start, sigma_end, rtol=1e-8, atol=1e-10)
        method = "DOP853 on the exact float64 denoiser, rtol 1e-10"
        x, other, factor = tight, loose, 1.0
    else:
        x = _heun(denoiser, start, sigma_start, sigma_end, steps)
        other, factor = _heun(denoiser, start, sigma_start, sigma_end, max(steps // 2, 1)), 1 / 3
        method = f"Heun, {steps} steps even in log sigma (Richardson estimate)"
    estimate = factor * _rms(x - other) / sigma_end
    return x, Reference(method=method, sigma_start=sigma_start, sigma_end=sigma_end, estimated_error=estimate,
                        evaluations=denoiser.calls - calls)


def _dop853(denoiser: Denoiser, start: torch.Tensor, sigma_start: float, sigma_end: float, *, rtol: float,
            atol: float) -> torch.Tensor:
    """dx/ds = x - D(x, e^s), s = log sigma, from log sigma_start down to log sigma_end."""
    from scipy.integrate import solve_ivp

    shape = start.shape

    def rhs(s, y):
        x = torch.from_numpy(y).reshape(shape)
        return (x - denoiser.x0(x, math.exp(s))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_start), math.log(sigma_end)), start.reshape(-1).numpy(), method="DOP853",
                    rtol=rtol, atol=atol)
    if not sol.success:
        raise GenerationError(f"The reference ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


def _heun(denoiser: Denoiser, start: torch.Tensor, sigma_start: float, sigma_end: float, steps: int) -> torch.Tensor:
    """Heun's method in sigma (k-diffusion's sample_heun without churn) on levels even in log sigma."""
    sig = np.exp(np.linspace(math.log(sigma_start), math.log(sigma_end), steps + 1))
    x = start.double()
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoiser.x0(x, s)) / s
        x_euler = x + (s_next - s) * d
        d_next = (x_euler - denoiser.x0(x_euler, s_next)) / s_next
        x = x + (s_next - s) * (d + d_next) / 2
    return x
