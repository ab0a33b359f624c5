"""The teaching model's speed: steps per second at 512 px on this machine's CPU.

    .venv/bin/python benchmarks/bench_toy.py [--steps 50] [--repeat 5] [--size 512]

Goal (issue: a teaching model): at least 50 steps/s for a DPM++ 2M run without previews, and the
Studio's live preview every step. Prints medians of several repeats, each variant interleaved.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch

import sdlab
from sdlab.previews import to_jpeg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    warnings.simplefilter("ignore", sdlab.SdlabNotice)
    lab = sdlab.load("toy")
    lab.pipe.set_progress_bar_config(disable=True)
    common = dict(steps=args.steps, seed=0, width=args.size, height=args.size, sampler="DPM++ 2M")

    def studio_like(event):  # what the Studio does with every frame, in the worker
        to_jpeg(event.preview)
        [to_jpeg(c[:, :, None].repeat(3, 2), max_side=None) for c in event.channels]

    variants = {
        "plain pipe()": lambda: lab.pipe("a red circle", num_inference_steps=args.steps, width=args.size,
                                         height=args.size, generator=lab.generator(0)),
        "generate, no records": lambda: lab.generate("a red circle", record=False, **common),
        "generate, records": lambda: lab.generate("a red circle", **common),
        "+ approx preview, JPEG frames": lambda: lab.generate("a red circle", preview="approx", preview_channels=True,
                                                              on_step=studio_like, **common),
    }
    lab.pipe.scheduler = sdlab.make_scheduler(lab, "DPM++ 2M")
    for fn in variants.values():
        fn()  # warm-up (the dataset's latents for this size are built once)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"toy model, {args.size} px, DPM++ 2M, {args.steps} steps, CFG 7, median of {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:32s} {t * 1000:8.1f} ms  {args.steps / t:7.1f} steps/s")


if __name__ == "__main__":
    main()
