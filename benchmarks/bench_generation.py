"""What instrumentation and previews cost, as ratios to a plain diffusers call measured in the same run.

    .venv/bin/python benchmarks/bench_generation.py [--model ID|tiny] [--steps 20] [--size 512] [--repeat 3]

On a GPU with a real model this is the number that matters (an SD 1.5 step at 512 px is 10-20 ms on an
A100 or H100, from the diffusers docs' and stable-fast's published it/s, so per-step Python work and host
syncs show). On the CPU with the tiny model the ratios mostly measure
Python overhead per step, which is the worst case for sdlab's taps.
"""
from __future__ import annotations

import argparse
import warnings

import sdlab
from run_all import interleaved  # this folder is on sys.path when the script runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sampler", default="DPM++ 2M")
    args = ap.parse_args()
    warnings.simplefilter("ignore", sdlab.SdlabNotice)
    lab = sdlab.load(args.model)
    lab.pipe.set_progress_bar_config(disable=True)
    size = args.size or (lab.pipe.unet.config.sample_size * lab.pipe.vae_scale_factor)
    common = dict(steps=args.steps, seed=0, width=size, height=size, sampler=args.sampler)

    def plain():
        lab.pipe.scheduler = sdlab.make_scheduler(lab, args.sampler)
        lab.pipe("a lighthouse", guidance_scale=7.0, num_inference_steps=args.steps, width=size, height=size,
                 generator=lab.generator(0))

    variants = {"plain pipe()": plain, "generate, no records": lambda: lab.generate("a lighthouse", record=False, **common),
                "generate, records": lambda: lab.generate("a lighthouse", **common),
                "records + approx preview": lambda: lab.generate("a lighthouse", preview="approx", **common),
                "records + vae preview (budgeted)": lambda: lab.generate("a lighthouse", preview="vae", **common)}
    try:
        sdlab.previews.load_taesd(lab.family)
        variants["records + taesd preview"] = lambda: lab.generate("a lighthouse", preview="taesd", **common)
    except sdlab.previews.PreviewUnavailable:
        pass
    times = interleaved(variants, args.repeat)  # the same interleaved, rotated medians as make bench
    base = times["plain pipe()"]
    rows = list(times.items())
    print(f"model={lab.source} device={lab.device} dtype={lab.dtype} size={size} steps={args.steps} "
          f"sampler={args.sampler} repeat={args.repeat}")
    for name, t in rows:
        print(f"{name:36s} {t * 1000:9.1f} ms  ratio {t / base:5.2f}  ({args.steps / t:6.1f} it/s)")
    run = lab.generate("a lighthouse", **common)
    print(f"records: {run.record_bytes / 2**20:.2f} MiB for {len(run.steps)} UNet calls "
          f"({run.record_bytes / len(run.steps) / 1024:.0f} KiB each), {run.record_bytes / lab.memory_bytes:.3f} x the weights")


if __name__ == "__main__":
    main()
