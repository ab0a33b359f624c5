"""Running the cells of a sweep on an executor: a Dask cluster, or any ``concurrent.futures.Executor``.

sdlab does not schedule work across machines itself: it hands each cell to an existing engine.

- The model travels as a reference (``Lab.__reduce__``: its source, device kind and dtype, never its
  weights) and resolves on the worker through ``sdlab.load``, so a worker loads it once and keeps it
  resident across the cells of a sweep and across sweeps.
- A cell comes back small: its Run with the images as PNG bytes and the per-step records without their
  tensors (records with tensors, float16, only when asked for).
- A cell that raises on the worker comes back as an error cell (the others complete); a worker that
  dies has its cells retried elsewhere (Dask's ``retries``).
- ``collect`` fills the result grid in place as cells finish, in whatever order, with a progress bar
  (cells done / total, failures counted), so a caller sees partial results and keeps them if interrupted.

With Dask: ``from dask.distributed import Client, LocalCluster; client = Client(LocalCluster(n_workers=2,
threads_per_worker=1))``; for several GPUs ``dask_cuda.LocalCUDACluster()`` (one worker per GPU), for a
SLURM machine ``dask_jobqueue.SLURMCluster(...)`` then ``cluster.scale(jobs=4)``; pass the Client.
"""
from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from .models import LabReference
from .records import Run

RETRIES = 2  # a cell whose worker died is run again on another, at most this many times

# Two of Dask's defaults make a CPU-bound torch pipeline in a worker about 1.9x slower than the same call in the
# notebook's process (benchmarks/run_all.py, row 7, measures both):
DASK_CONFIG = {
    # The nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536 (distributed.yaml, pre-spawn-environ).
    # Setting any glibc malloc threshold turns off glibc's dynamic mmap threshold (mallopt(3), M_MMAP_THRESHOLD),
    # so every allocation above 128 KiB is a fresh mmap, page-faulted and zeroed: about 1.6x here.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # The statistical profiler samples every thread's stack every 10 ms, taking the GIL that the pipeline's
    # Python code needs between torch ops: about 1.2x more.
    "distributed.worker.profile.enabled": False,
}


def configure_dask() -> None:
    """Set ``DASK_CONFIG`` for the clusters this process starts from now on (call it before ``LocalCluster``).
    Also drops MALLOC_TRIM_THRESHOLD_ from this process's environment, where a cluster started earlier put it
    (a LocalCluster's nannies write their workers' environment into it) and new workers would inherit it."""
    import os

    import dask

    dask.config.set(DASK_CONFIG)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)


def _worker_settings() -> tuple[str | None, bool]:
    import os

    import dask

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), bool(dask.config.get("distributed.worker.profile.enabled", True))


_CHECKED: set[int] = set()  # the clients whose workers were looked at (once each)


def check_workers(executor, lab) -> None:
    """Once per Dask client, for a model on the CPU: say if its workers run with the settings that slow torch
    down (``DASK_CONFIG``), and how to start them without."""
    if not _is_dask(executor) or id(executor) in _CHECKED or getattr(lab, "device", None) is None \
            or getattr(lab.device, "type", str(lab.device)) != "cpu":
        return
    _CHECKED.add(id(executor))
    try:
        found = set(executor.run(_worker_settings).values())
    except Exception:  # noqa: BLE001 - a check for a notice never stops a sweep
        return
    slow = [what for what, hit in (("MALLOC_TRIM_THRESHOLD_ set", any(t is not None for t, _ in found)),
                                   ("the statistical profiler on", any(p for _, p in found))) if hit]
    if slow:
        from .notices import notice

        notice(f"sdlab: the Dask workers run with {' and '.join(slow)}, which make a CPU model about 1.9x slower "
               "there than here. Start the cluster after sdlab.distributed.configure_dask() (in a fresh kernel).")


@dataclass
class CellError:
    """A cell that failed where it ran: the exception's type and message."""

    kind: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" + (f" (on {self.where})" if self.where else "")


def pack(run: Run, records: bool = False) -> Run:
    """A copy of ``run`` that is small to send: images as PNG bytes, records without tensors unless
    ``records`` (then as recorded: float16 by default)."""
    images = []
    for img in run.images:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append(buf.getvalue())
    # records keep the dtype they were recorded in (float16 unless the run asked for record_dtype=float32)
    recs = list(run.records) if records else [replace(r, latents=None, x0=None, noise_uncond=None, noise_cond=None)
                                              for r in run.records]
    return replace(run, images=images, records=recs, error=None)


def unpack(run: Run) -> Run:
    """The images of a packed run back as PIL images (decoded PNG: the same pixels)."""
    from PIL import Image

    images = [Image.open(io.BytesIO(b)).copy() if isinstance(b, (bytes, bytearray)) else b for b in run.images]
    return replace(run, images=images)


def _where() -> str:
    import os
    import socket

    return f"{socket.gethostname()} pid {os.getpid()}"


_QUIET_LOCK = threading.Lock()
_QUIET: dict[int, list] = {}  # id(pipe) -> [cells running quietly on it, the user's own bar settings]


@contextlib.contextmanager
def _quiet(lab):
    """The pipeline's own progress bar off while cells run (one bar over the cells instead), and the user's
    setting back when the last cell on that pipeline ends (cells of an in-process executor overlap)."""
    pipe = lab.pipe
    with _QUIET_LOCK:
        entry = _QUIET.setdefault(id(pipe), [0, dict(getattr(pipe, "_progress_bar_config", {}))])
        entry[0] += 1
        pipe.set_progress_bar_config(**{**entry[1], "disable": True})
    try:
        yield
    finally:
        with _QUIET_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                pipe._progress_bar_config = entry[1]
                del _QUIET[id(pipe)]


def run_here(lab, cells: dict, options: dict, on_result: Callable[[Any, Any], None], *, progress: bool = True,
             label: str = "cells") -> bool:
    """``collect``'s twin for no executor: the cells (prepared runs: their names are resolved already) one
    after another in this process, each delivered as ``collect`` delivers it (the run, or a CellError for a
    cell that failed; no PNG round trip). Returns False if interrupted (what finished stays delivered)."""
    def results():
        for key, prepared in cells.items():
            try:
                value = lab.generate(prepared, **options)
            except Exception as exc:  # noqa: BLE001 - any failure of the cell becomes its error cell
                value = CellError(type(exc).__name__, str(exc), _where())
            yield key, value

    if not cells:
        return _deliver(iter(()), 0, on_result, progress, label)
    with _quiet(lab):
        return _deliver(results(), len(cells), on_result, progress, label)


def run_cell(lab, settings, options: dict, records: bool) -> Run | CellError:
    """What a worker runs for one cell: resolve the model (resident after the first cell), generate, pack.
    Errors come back as data, so that a deterministic failure is not retried as if the worker had died."""
    where = _where()
    try:
        if isinstance(lab, LabReference):  # what a Lab becomes when sent: load it, or find it resident
            lab = lab.resolve()
        with _quiet(lab):  # (cells of an in-process executor's threads share one model: they take turns)
            return pack(lab.generate(settings, queue=True, **options), records=records)
    except Exception as exc:  # noqa: BLE001 - any failure of the cell becomes its error cell
        return CellError(type(exc).__name__, str(exc), where)


def _is_dask(executor) -> bool:
    return type(executor).__module__.startswith("distributed")


def submit(executor, fn: Callable, *args):
    if _is_dask(executor):
        return executor.submit(fn, *args, retries=RETRIES, pure=False)
    return executor.submit(fn, *args)


def as_completed(executor, futures: Iterable):
    if _is_dask(executor):
        from distributed import as_completed as dask_completed

        return dask_completed(list(futures))
    from concurrent.futures import as_completed as cf_completed

    return cf_completed(list(futures))


def cancel(executor, futures: Iterable) -> None:
    futures = list(futures)
    if _is_dask(executor):
        executor.cancel(futures)
    else:
        for f in futures:
            f.cancel()


def collect(executor, tasks: dict[Any, tuple], on_result: Callable[[Any, Any], None], *, progress: bool = True,
            label: str = "cells") -> bool:
    """Submit ``{key: (fn, *args)}``, call ``on_result(key, value)`` as each finishes (any order), with a
    progress bar. A task that raises there (its worker died more often than the retries) is handed to
    ``on_result`` as a CellError. Returns False if interrupted (KeyboardInterrupt): the remaining tasks are
    cancelled and what finished stays delivered."""
    futures = {}
    for key, (fn, *args) in tasks.items():
        futures[submit(executor, fn, *args)] = key

    def results():
        for future in as_completed(executor, futures):
            try:
                value = future.result()
            except Exception as exc:  # noqa: BLE001
                value = CellError(type(exc).__name__, str(exc))
            yield futures[future], value

    done = _deliver(results(), len(futures), on_result, progress, label)
    if not done:
        cancel(executor, futures)
    return done


def _deliver(results: Iterable[tuple[Any, Any]], total: int, on_result: Callable[[Any, Any], None], progress: bool,
             label: str) -> bool:
    """Hand each (key, value) to ``on_result`` as it comes, with one progress bar (failures counted on it).
    False if interrupted (KeyboardInterrupt): what came before stays delivered."""
    bar = _bar(total, label) if progress else None
    failed = 0
    try:
        for key, value in results:
            failed += isinstance(value, CellError)
            on_result(key, value)
            if bar is not None:
                bar.update(1)
                if failed:
                    bar.set_postfix(failed=failed)
    except KeyboardInterrupt:
        return False
    finally:
        if bar is not None:
            bar.close()
    return True


def _bar(total: int, label: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sdlab: {label}", unit="cell")

