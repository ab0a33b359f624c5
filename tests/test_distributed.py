"""Sweeps on a Dask cluster: a LocalCluster with 2 worker processes on the CPU, the tiny and toy models."""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch

import sdlab
import sdlab.distributed

from distributed import Client, LocalCluster  # sdlab[dask], part of the test extra: missing is a failure

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the functions below run on the workers
GRID = dict(x="sampler", x_values=["Euler", "DPM++ 2M", "DDIM"], y="cfg", y_values=[3.0, 7.0],
            prompt="a lighthouse", steps=4, seed=3, width=32, height=32)


def _children() -> list[int]:
    """Processes whose parent is this one (a LocalCluster's nannies and workers)."""
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                try:
                    cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "resource_tracker" not in cmdline:  # multiprocessing's, lives as long as this process
                    out.append(int(entry.name))
    return out


@contextlib.contextmanager
def _threads(n):
    """torch's CPU thread count for a local run to compare with a worker's (float sums split by it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client():
    before = set(_children())
    sdlab.distributed.configure_dask()  # as the README says: Dask's defaults slow a CPU model down ~1.9x
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        deadline = time.time() + 30
        while set(_children()) - before and time.time() < deadline:
            time.sleep(0.2)
        assert not set(_children()) - before, "the cluster left processes behind"


def test_a_sweep_on_the_cluster_equals_the_local_one_bit_for_bit(lab, client):
    remote = sdlab.sweep(lab, executor=client, **GRID)
    threads = remote.runs[0][0].threads
    assert threads == 1  # the workers' own count (one thread each), recorded with every run
    with _threads(threads):
        local = sdlab.sweep(lab, **GRID)
    assert remote.shape == local.shape == (2, 3) and remote.errors == {} and not remote.interrupted
    for row_r, row_l in zip(remote.runs, local.runs):
        for r, l in zip(row_r, row_l):
            assert r.settings == l.settings and r.nfe == l.nfe > 0
            assert r.image.tobytes() == l.image.tobytes()
            assert all(rec.latents is None for rec in r.records)  # small: no tensors unless asked
    kept = sdlab.sweep(lab, executor=client, records=True, **{**GRID, "y_values": [7.0]})
    assert kept.runs[0][0].records[0].latents.dtype == torch.float16


@pytest.mark.parametrize("size", [64, 512])
def test_a_cell_on_a_worker_is_bit_identical_to_a_local_run_with_its_thread_count(lab, client, size):
    # (at 512 px the tiny UNet's self-attention over 4096 positions takes seconds a call: one step, no CFG)
    cell = dict(prompt="a lighthouse", steps=3 if size == 64 else 1, seed=7, width=size, height=size, sampler="Euler",
                cfg=7.0 if size == 64 else 1.0)
    remote = sdlab.sweep(lab, executor=client, x="seed", x_values=[7], **{k: v for k, v in cell.items() if k != "seed"})
    run = remote.runs[0][0]
    with _threads(run.threads):
        local = lab.generate(**cell, record=False)
    assert np.array_equal(np.asarray(run.image), np.asarray(local.image))
    assert torch.equal(run.final_latents, local.final_latents)
    if size != 64:
        return
    # with another thread count float sums split differently: the latents move by about 1e-4 and, at 512 px, a
    # few dozen pixels by 1/255 (measured on this machine); the README says what is guaranteed
    with _threads(run.threads + 1):
        other = lab.generate(**cell, record=False)
    assert float((other.final_latents - run.final_latents).abs().max()) < 1e-2


def test_workers_that_slow_a_cpu_model_down_are_said_once(lab):
    from sdlab import distributed

    class FakeClient:  # what check_workers asks of a Dask client
        __module__ = "distributed.client"

        def __init__(self, settings):
            self.settings, self.asked = settings, 0

        def run(self, fn):
            self.asked += 1
            return {"tcp://worker": self.settings}

    slow = FakeClient(("65536", True))
    with pytest.warns(sdlab.SdlabNotice, match="MALLOC_TRIM_THRESHOLD_ set and the statistical profiler on.*configure_dask"):
        distributed.check_workers(slow, lab)
    distributed.check_workers(slow, lab)  # once per client
    assert slow.asked == 1
    fine = FakeClient((None, False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distributed.check_workers(fine, lab)


def test_each_worker_loads_the_model_once_across_sweeps(lab, client):
    for _ in range(2):
        sdlab.sweep(lab, executor=client, **GRID)
    loads = client.run(lambda: __import__("sdlab").models.LOADS.get("tiny", 0))
    assert sorted(loads.values()) == [1, 1], loads


def _fail_seed_13():
    import sdlab.generation as g

    original = getattr(g, "_original_run", g._run)
    g._original_run = original

    def failing(lab, prepared, *args, **kwargs):
        if prepared.settings.seed == 13:
            raise RuntimeError("this cell breaks on the worker")
        return original(lab, prepared, *args, **kwargs)

    g._run = failing


def _heal():
    import sdlab.generation as g

    g._run = getattr(g, "_original_run", g._run)


def test_a_cell_that_fails_on_a_worker_is_an_error_cell(lab, client):
    client.run(_fail_seed_13)
    try:
        result = sdlab.sweep(lab, executor=client, x="seed", x_values=[11, 12, 13, 14], prompt="x", steps=2,
                             width=32, height=32)
    finally:
        client.run(_heal)
    assert list(result.errors) == [(0, 2)] and "this cell breaks on the worker" in result.errors[0, 2]
    assert result.runs[0][2] is None and all(result.runs[0][j].done for j in (0, 1, 3))


def test_a_model_a_worker_cannot_load_fails_its_cells_with_a_message(client, tmp_path):
    from sdlab.tiny import build_tiny_pipeline

    folder = tmp_path / "only-here"
    build_tiny_pipeline().save_pretrained(folder)
    mine = sdlab.load(str(folder))
    import shutil

    shutil.rmtree(folder)  # resident here; the workers will not find it
    t = time.time()
    result = sdlab.sweep(mine, executor=client, x="seed", x_values=[1, 2], prompt="x", steps=2, width=32, height=32)
    assert time.time() - t < 120 and len(result.errors) == 2
    assert all("cannot load the model" in e and "only-here" in e for e in result.errors.values())
    sdlab.unload(mine)


def test_a_worker_killed_mid_sweep_has_its_cells_retried(lab, client):
    result = sdlab.sweep(lab, executor=client, x="seed", x_values=list(range(10)), prompt="x", steps=60,
                         width=64, height=64, wait=False)
    deadline = time.time() + 120
    while result.finished < 1:
        assert time.time() < deadline
        time.sleep(0.05)
    import signal

    victim = next(iter(client.scheduler_info()["workers"]))
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)  # the worker process dies mid-sweep; its nanny starts a new one
    result.wait(300)
    assert result.done and result.finished == 10 and result.errors == {}
    assert all(r.done for r in result.runs[0])
    client.wait_for_workers(2, timeout=120)
    with _threads(result.runs[0][7].threads):
        local = lab.generate("x", seed=7, steps=60, width=64, height=64)
    assert result.runs[0][7].image.tobytes() == local.image.tobytes()


def test_invalid_cells_are_refused_before_anything_is_submitted(lab, client):
    submitted = []
    original = client.submit
    client.submit = lambda *a, **k: submitted.append(1) or original(*a, **k)
    try:
        with pytest.raises(ValueError, match="The cell sampler='Eulr' .x_values. cannot run"):
            sdlab.sweep(lab, executor=client, x="sampler", x_values=["Euler", "Eulr"], prompt="x", steps=2,
                        width=32, height=32)
    finally:
        del client.submit
    assert submitted == []


def test_sampler_accuracy_on_the_cluster_equals_the_local_study(client):
    toy = sdlab.load("toy")
    toy.pipe.set_progress_bar_config(disable=True)
    kw = dict(samplers=["Euler", "DPM++ 2M"], schedules=["karras"], steps=[4, 8], prompt="a red circle", seed=1,
              width=64, height=64)
    remote = sdlab.sampler_accuracy(toy, executor=client, **kw)
    local = sdlab.sampler_accuracy(toy, **kw)
    assert [(r.sampler, r.steps, r.nfe, r.error) for r in remote.rows] == \
        [(r.sampler, r.steps, r.nfe, r.error) for r in local.rows]
    assert remote.errors == {}


def test_any_concurrent_futures_executor_works_too(lab):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:  # one model, one run at a time: one thread
        remote = sdlab.sweep(lab, executor=pool, progress=False, **GRID)
    local = sdlab.sweep(lab, **GRID)
    assert [[r.image.tobytes() for r in row] for row in remote.runs] == \
        [[r.image.tobytes() for r in row] for row in local.runs]


def test_a_sweep_means_the_same_with_and_without_an_executor(lab, monkeypatch, capsys):
    from concurrent.futures import ThreadPoolExecutor

    real = sdlab.Lab.generate

    def generate(self, prompt=None, **kwargs):  # one cell fails at run time (after prepare passed it)
        if getattr(getattr(prompt, "settings", prompt), "seed", None) == 12:  # (Settings, or a prepared run)
            raise sdlab.GenerationError("the cell with seed 12 broke")
        return real(self, prompt, **kwargs)

    monkeypatch.setattr(sdlab.Lab, "generate", generate)
    kw = dict(x="seed", x_values=[11, 12, 13], prompt="x", steps=3, width=32, height=32)
    lab.pipe.set_progress_bar_config(disable=False)
    local = sdlab.sweep(lab, **kw)
    with ThreadPoolExecutor(max_workers=1) as pool:
        remote = sdlab.sweep(lab, executor=pool, **kw)
    bars = capsys.readouterr().err
    # error cells alike: the failing cell is named, the others complete
    assert local.errors == remote.errors and list(local.errors) == [(0, 1)]
    assert local.errors[0, 1].startswith("GenerationError: the cell with seed 12 broke (on ")
    assert local.runs[0][1] is None and remote.runs[0][1] is None
    for a, b in ((local.runs[0][0], remote.runs[0][0]), (local.runs[0][2], remote.runs[0][2])):
        assert a.image.tobytes() == b.image.tobytes() and torch.equal(a.final_latents, b.final_latents)
        # records alike: metadata without tensors unless records=True
        assert [r.sigma for r in a.records] == [r.sigma for r in b.records] and a.records[0].latents is None
        assert b.records[0].latents is None
    # progress alike: one bar over the cells each, none from the pipeline's own loop
    assert bars.count("sdlab: sweep seed") >= 2 and "3/3" in bars and "it/s" not in bars.replace("cell/s", "")
    assert lab.pipe._progress_bar_config.get("disable") is False  # the user's setting is back
    kept = sdlab.sweep(lab, records=True, progress=False, **{**kw, "x_values": [11]})
    assert kept.runs[0][0].records[0].latents is not None
    later = sdlab.sweep(lab, wait=False, progress=False, **{**kw, "x_values": [11, 13]})
    assert later.wait(60).done and later.finished == 2
