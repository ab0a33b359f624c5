"""sdlab's claims, measured: one command runs every benchmark, prints one table and writes it to docs/.

    .venv/bin/python benchmarks/run_all.py [--repeat 5] [--quick] [--out docs/benchmarks.md]     (make bench)

Every figure is a ratio or a count within one run of this script: the variants being compared are run
interleaved (A B A B ...) and the median of the repeats is taken, so a noisy machine shifts both sides and
does not decide the result. The GPU rows run only where CUDA is available (``--gpu`` adds SD 1.5's
architecture at 512 px fp16, random weights); elsewhere they say "not run".

Models: "mid" is a random-weight SD 1.x-layout pipeline built here and loaded from a folder through
``sdlab.load`` (the real loading code), sized so that one UNet step takes at least ~100 ms on a laptop CPU:
instrumentation is compared against real work, not against a toy that does nothing.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import sdlab
from sdlab.distributed import DASK_CONFIG
from sdlab.previews import to_jpeg

ROWS: list[tuple[str, str, str, str]] = []  # (benchmark, measured, goal, verdict)


def row(name: str, measured: str, goal: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("met" if ok else "MISSED")
    ROWS.append((name, measured, goal, verdict))
    print(f"  {name:58s} {measured:34s} {goal:14s} {verdict}", flush=True)


def interleaved(variants: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each variant, run A B C A B C ... after one warm-up each."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no variant always goes first
            fn = variants[name]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def build_mid(folder: Path, size: int = 256) -> Path:
    """A random-weight SD 1.x-layout pipeline, wide enough for ~100 ms+ UNet steps on a CPU, saved as a folder."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    from sdlab.tiny import SD15_SCHEDULER_CONFIG, build_tiny_pipeline

    base = build_tiny_pipeline()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(96, 192, 256, 256), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=32, attention_head_dim=8)
    vae = AutoencoderKL(sample_size=size, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(32, 64, 128, 128), norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    from diffusers import PNDMScheduler

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


# --- 1, 2: what watching costs -------------------------------------------------------------------------
def overhead(lab, label: str, steps: int, size: int, repeat: int, goals: dict[str, float]) -> None:
    lab.pipe.set_progress_bar_config(disable=True)
    common = dict(steps=steps, seed=0, width=size, height=size, sampler="DPM++ 2M")
    frames = {"approx": 0, "vae": 0}
    runs = {"approx": 0, "vae": 0}

    def studio_like(kind):
        def on_step(event):  # what the Studio does with a frame, in the worker: JPEG-encode it
            if event.record.nfe == 1:
                runs[kind] += 1
            if event.preview is not None:
                to_jpeg(event.preview)
                frames[kind] += 1
        return on_step

    def plain():
        lab.pipe.scheduler = sdlab.make_scheduler(lab, "DPM++ 2M")
        lab.pipe("a lighthouse", guidance_scale=7.0, num_inference_steps=steps, width=size, height=size,
                 generator=lab.generator(0))

    t = interleaved({
        "plain": plain,
        "approx": lambda: lab.generate("a lighthouse", preview="approx", on_step=studio_like("approx"), **common),
        "vae": lambda: lab.generate("a lighthouse", preview="vae", on_step=studio_like("vae"), **common),
    }, repeat)
    step_ms = t["plain"] / steps * 1000
    ratio = t["approx"] / t["plain"]
    row(f"1. approx preview + JPEG every step vs plain pipe() [{label}]",
        f"{ratio:.3f}x (plain step {step_ms:.0f} ms)", f"<= {goals['approx']:.2f}x", ratio <= goals["approx"])
    ratio = t["vae"] / t["plain"]
    row(f"2. full-VAE preview (throttled) vs plain pipe() [{label}]",
        f"{ratio:.3f}x ({frames['vae'] / runs['vae']:.1f} VAE frames a run)", f"<= {goals['vae']:.2f}x",
        ratio <= goals["vae"])


# --- 1b: what recording attention costs ------------------------------------------------------------------
def attention_cost(lab, label: str, steps: int, size: int, repeat: int, goal: float = 1.15) -> None:
    """A run recording cross-attention maps against the same run without, and the maps' memory (issue 22)."""
    lab.pipe.set_progress_bar_config(disable=True)
    common = dict(steps=steps, seed=0, width=size, height=size, sampler="DPM++ 2M", record=False)
    prompt = "a lighthouse on a cliff at dusk, oil painting"
    t = interleaved({"without": lambda: lab.generate(prompt, **common),
                     "with": lambda: lab.generate(prompt, attention=True, **common)}, repeat)
    ratio = t["with"] / t["without"]
    run = lab.generate(prompt, attention=True, **common)
    per_call = run.attention.nbytes / len(run.attention.calls)
    tokens = len(run.attention.tokens)
    at_512 = per_call * (64 * 64) / ((size // 8) ** 2) * 50  # the same prompt, 64 x 64 latents, 50 calls
    row(f"1b. attention maps recorded vs not [{label}]",
        f"{ratio:.3f}x; maps {per_call / 1024:.0f} KiB a call for {tokens} tokens, {at_512 / 2 ** 20:.1f} MiB for "
        f"50 steps at 512 px", f"<= {goal:.2f}x", ratio <= goal)


# --- 3: residency ---------------------------------------------------------------------------------------
def residency(folder: Path, repeat: int) -> None:
    sdlab.unload()
    gc.collect()
    t = time.perf_counter()
    lab = sdlab.load(str(folder))
    first = time.perf_counter() - t
    again = []
    for _ in range(repeat):
        t = time.perf_counter()
        same = sdlab.load(str(folder))
        again.append(time.perf_counter() - t)
        assert same is lab
    row("3. load of a resident model vs the first load", f"{statistics.median(again) / first:.5f}x "
        f"({statistics.median(again) * 1e3:.2f} ms vs {first:.2f} s)", "", None)
    ptr = lab.pipe.unet.conv_in.weight.data_ptr()
    switch = []
    for name in ["Euler", "DPM++ 2M", "UniPC", "Euler a", "DDIM"] * max(1, repeat // 2):
        t = time.perf_counter()
        lab.set_sampler(name)
        switch.append(time.perf_counter() - t)
    kept = lab.pipe.unet.conv_in.weight.data_ptr() == ptr
    row("3. sampler switch", f"{statistics.median(switch) * 1e3:.1f} ms, weights kept: {kept}", "no reload", kept)


# --- 4: stop latency ------------------------------------------------------------------------------------
def stop_latency(lab, trials: int) -> None:
    lab.pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    late = []
    for _ in range(trials):
        at = int(rng.integers(1, 15))
        holder = {}

        def on_step(event, at=at, holder=holder):
            if event.record.nfe == at:
                holder["job"].stop()

        job = lab.generate_async("x", steps=20, seed=1, width=32, height=32, sampler="Euler", on_step=on_step)
        holder["job"] = job
        run = job.wait(60)
        late.append(len(run.records) - at)
    row(f"4. Stop latency, API ({trials} trials, random step)", f"max {max(late)} steps after (median "
        f"{statistics.median(late):g})", "<= 1 step", max(late) <= 1)
    studio = sdlab.Studio(lab, steps=40, width=32, height=32, preview="off")
    late = []
    for _ in range(max(5, trials // 4)):
        studio.on_generate()
        while studio.job.run is None or len(studio.job.run.records) < 3:
            time.sleep(0.001)
        before = len(studio.job.run.records)
        studio.on_stop()  # the Stop button's handler, as a click runs it
        studio.idle.wait(60)
        late.append(len(studio.job.run.records) - before)
    row("4. Stop latency, from the Studio's Stop", f"max {max(late)} steps after the click", "<= 1 step",
        max(late) <= 1)


# --- 5: frames ------------------------------------------------------------------------------------------
def frames(repeat: int) -> None:
    toy = sdlab.load("toy")
    toy.pipe.set_progress_bar_config(disable=True)
    run = toy.generate("a red circle", steps=20, seed=0, preview="approx", width=512, height=512)
    rgb = np.asarray(run.image.convert("RGB"))
    early = (np.random.default_rng(0).random(rgb.shape) * 255).astype(np.uint8)  # an early, noise-like frame
    for label, img in (("a finished picture", rgb), ("a noise-like early frame", early)):
        times = []
        for _ in range(repeat * 5):
            t = time.perf_counter()
            data = to_jpeg(img)
            times.append(time.perf_counter() - t)
        row(f"5. JPEG frame at 512 px, {label}", f"{len(data) / 1024:.0f} KiB, {statistics.median(times) * 1e3:.1f} ms",
            "<= 64 KiB", len(data) <= 64 * 1024)
    studio = sdlab.Studio(toy, steps=120, width=512, height=512, max_fps=20.0)
    shown = {"n": 0}
    original = studio.viewer.panel.show

    def counting(*a, **k):
        shown["n"] += 1
        return original(*a, **k)

    studio.viewer.panel.show = counting
    t = time.perf_counter()
    studio.on_generate()
    studio.idle.wait(120)
    seconds = time.perf_counter() - t
    fps = shown["n"] / seconds
    steps_per_s = len(studio.job.run.records) / seconds
    row("5. frames sent to the widget during a fast run (toy, 512 px)",
        f"{fps:.1f} fps ({steps_per_s:.0f} steps/s)", f"<= {studio.max_fps:g} fps (+1 final)",
        shown["n"] <= studio.max_fps * seconds + 2)


# --- 6: memory ------------------------------------------------------------------------------------------
def memory(folder: Path) -> None:
    lab = sdlab.load(str(folder))
    lab.pipe.set_progress_bar_config(disable=True)
    lab.generate("x", steps=4, seed=0, width=128, height=128, preview="approx")
    gc.collect()
    start = rss_mb()
    for i in range(20):
        lab.generate("x", steps=4, seed=i, width=128, height=128, preview="approx")
    gc.collect()
    growth = rss_mb() - start
    row("6. resident memory growth over 20 generations", f"{growth:+.1f} MB", "<= 50 MB", growth <= 50)
    sdlab.unload()
    gc.collect()
    sdlab.load(str(folder))
    sdlab.unload()
    gc.collect()
    start = rss_mb()
    for _ in range(5):
        sdlab.load(str(folder))
        sdlab.unload()
        gc.collect()
    growth = rss_mb() - start
    row("6. resident memory growth over 5 load/unload cycles", f"{growth:+.1f} MB", "<= 50 MB", growth <= 50)


# --- 7: sweeps on a Dask cluster --------------------------------------------------------------------------
def _one_thread():
    torch.set_num_threads(1)


def _trim_setting():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def sweep_scaling(folder: Path, repeat: int) -> None:
    """A 16-cell sweep of a CPU-bound model locally (one torch thread) and on 1 and 2 Dask worker processes
    (one thread each): the speed-up of 2 workers over the local run, and the cluster path's cost per cell.

    Dask's defaults and the settings of sdlab.distributed.configure_dask() (DASK_CONFIG: no malloc trim
    threshold, no statistical profiler; why is written there) are both measured."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        row("7. 16-cell sweep on Dask, 2 workers vs local", "not run: pip install 'sdlab[dask]'", ">= 1.6x", None)
        return
    lab = sdlab.load(str(folder))
    lab.pipe.set_progress_bar_config(disable=True)
    grid = dict(x="seed", x_values=list(range(8)), y="cfg", y_values=[4.0, 8.0], prompt="x", steps=6,
                width=128, height=128, sampler="Euler", progress=False)
    local_runs: list[float] = []

    def run_locally():  # before the clusters and after them: a machine whose speed drifts shifts both sides
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            sdlab.sweep(lab, **{**grid, "x_values": [0]})
            for _ in range(max(1, repeat // 2)):
                t = time.perf_counter()
                sdlab.sweep(lab, **grid)
                local_runs.append(time.perf_counter() - t)
        finally:
            torch.set_num_threads(threads)

    run_locally()
    times = {}
    for how in ("defaults", "configured"):  # Dask's defaults, then sdlab.distributed.configure_dask()'s settings
        for n in (1, 2):
            # (a cluster's nannies write their workers' environment into this process's os.environ, where the
            # next cluster's workers would inherit it: configure_dask drops it, as here)
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            with dask.config.set(DASK_CONFIG if how == "configured" else {}), \
                    LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                client.run(_one_thread)
                trims = set(client.run(_trim_setting).values())
                assert trims == ({None} if how == "configured" else {"65536"}), trims
                sdlab.sweep(lab, executor=client, **{**grid, "x_values": list(range(n))})  # each worker loads it
                runs = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    result = sdlab.sweep(lab, executor=client, **grid)
                    runs.append(time.perf_counter() - t)
                    assert result.errors == {} and result.finished == 16
                times[how, n] = statistics.median(runs)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    run_locally()
    local = statistics.median(local_runs)
    for how, text in (("configured", "after sdlab.distributed.configure_dask()"), ("defaults", "Dask's defaults")):
        speedup = local / times[how, 2]
        row(f"7. 16-cell sweep, 2 Dask workers vs local (1 thread each), {text}",
            f"{speedup:.2f}x ({local:.1f} s vs {times[how, 2]:.1f} s)", ">= 1.6x" if how == "configured" else "",
            speedup >= 1.6 if how == "configured" else None)
        row(f"7. the cluster path's cost per cell (1 worker vs local), {text}",
            f"{(times[how, 1] - local) / 16 * 1000:+.0f} ms a cell ({local / 16:.2f} s a cell locally)", "", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and trials (a smoke run)")
    ap.add_argument("--gpu", action="store_true", help="also SD 1.5's architecture at 512 px fp16 (needs CUDA)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    repeat = 2 if args.quick else args.repeat
    warnings.simplefilter("ignore", sdlab.SdlabNotice)
    import diffusers

    header = (f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads), diffusers {diffusers.__version__}, "
              f"Python {sys.version.split()[0]}, sdlab {sdlab.__version__}; medians of {repeat} interleaved repeats.")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_mid(Path(tmp) / "mid")
        mid = sdlab.load(str(folder))
        params = sum(p.numel() for p in mid.pipe.unet.parameters()) / 1e6
        models = (f"Models: 'mid' = SD 1.x layout, random weights, UNet {params:.0f} M parameters, 256 px (32x32 "
                  f"latents; 128 px in the sweep), CPU float32; 'tiny' = the tests' model; 'toy' = the teaching model.")
        print(models)
        overhead(mid, "mid, CPU, 256 px, 24 steps", 24, 256, repeat, {"approx": 1.05, "vae": 1.10})
        attention_cost(mid, "mid, CPU, 256 px, 24 steps", 24, 256, repeat)
        if torch.cuda.is_available() and args.gpu:
            gpu_rows(Path(tmp), repeat)
        else:
            why = "no GPU on this machine" if not torch.cuda.is_available() else "run with --gpu"
            row("1. approx preview + JPEG vs plain pipe() [SD 1.5 arch, GPU, 512 px fp16]", f"not run: {why}",
                "<= 1.03x", None)
            row("6. CUDA memory growth over 20 generations", f"not run: {why}", "0", None)
        residency(folder, repeat)
        tiny = sdlab.load("tiny")
        stop_latency(tiny, 8 if args.quick else 40)
        frames(repeat)
        memory(folder)
        sweep_scaling(folder, repeat)
    sdlab.unload()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# sdlab benchmarks", "", "Written by `make bench` (benchmarks/run_all.py); every figure is a ratio or "
             "count within one run.", "", header, "", models, "", "| benchmark | measured | goal | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ROWS]
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


def build_sd15(folder: Path) -> Path:
    """SD 1.5's architecture (UNet 860 M, its VAE, a CLIP-L-sized text encoder), random weights, as a folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlab.tiny import SD15_SCHEDULER_CONFIG, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280))  # diffusers' defaults are SD 1.x's
    vae = AutoencoderKL(sample_size=512, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                            scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


def gpu_rows(tmp: Path, repeat: int) -> None:
    """The GPU goals: SD 1.5's architecture at 512 px fp16, and CUDA memory over 20 generations."""
    lab = sdlab.load(str(build_sd15(tmp / "sd15")), device="cuda", dtype="float16")
    overhead(lab, "SD 1.5 arch, GPU, 512 px fp16, 20 steps", 20, 512, repeat, {"approx": 1.03, "vae": 1.10})
    lab.generate("x", steps=4, seed=0, preview="approx")
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    for i in range(20):
        lab.generate("x", steps=4, seed=i, preview="approx")
    torch.cuda.synchronize()
    growth = (torch.cuda.memory_allocated() - start) / 2 ** 20
    row("6. CUDA memory growth over 20 generations", f"{growth:+.1f} MB", "0", growth <= 0)
    sdlab.unload(lab)


if __name__ == "__main__":
    main()
