"""The teaching model: ``sdlab.load("toy")`` draws real pictures on any CPU, offline, in milliseconds a step.

It is a real diffusers ``StableDiffusionPipeline`` whose UNet is the *exact* denoiser of a built-in set
of 432 procedurally drawn pictures (4 shapes x 6 colours x 3 columns x 3 rows x 2 sizes), in a 4-channel
latent space at 1/8 resolution with a fixed, smooth decoder. Prompt words pick attributes ("a small red
star at the top left"); the negative prompt takes the unconditional slot, as in Stable Diffusion.

It is a teaching model: it can only draw its own pictures. It memorises them exactly, which is also
what the exact denoiser of any finite data set does; a trained model generalises because it is *not*
exact. ``"toy-v"`` is the same model answering in v-prediction (as SD 2.x 768-v does).

``sdlab.toy.dataset()`` returns its pictures, latents, attributes and vocabulary.
"""
from __future__ import annotations

from .data import GROUPS, STOP_WORDS, Dataset, allowed_for, attributes, dataset, unknown_words, vocabulary

__all__ = ["GROUPS", "STOP_WORDS", "Dataset", "allowed_for", "attributes", "build_toy_pipeline", "dataset",
           "describe", "is_teaching_model", "unknown_words", "vocabulary"]


def is_teaching_model(obj) -> bool:
    """The one answer to "is this the teaching model?", for a Lab (from its family, so that an unloaded Lab
    knows too), a pipeline or a UNet (whether the UNet is the toy's exact denoiser, ``ToyUNet``)."""
    family = getattr(obj, "family", None)
    if isinstance(family, str):
        return family == "toy"
    unet = getattr(obj, "unet", obj)
    if type(unet).__module__ != "sdlab.toy.model":  # nothing else can be one (and diffusers need not load)
        return False
    from .model import ToyUNet

    return isinstance(unet, ToyUNet)


def build_toy_pipeline(dtype=None, prediction_type: str = "epsilon"):
    """The teaching model's StableDiffusionPipeline (see :mod:`sdlab.toy.model`)."""
    import torch

    from .. import checks
    from .model import build_toy_pipeline as build

    if dtype is not None:
        checks.choice("dtype", dtype, (torch.float32, torch.float64, torch.float16, torch.bfloat16))
    checks.choice("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample"))
    return build(dtype or torch.float32, prediction_type)


NATIVE = 512  # the size the teaching model's lessons are made for


def size_note(width: int, height: int) -> str | None:
    """What to say when the teaching model runs above 512 x 512: its pictures are redrawn at that size from
    noise of that size, so a seed's picture is not the 512 one scaled (positions and sizes are fractions of
    the picture, but which picture a seed lands on is decided anew), and runs cost more for nothing new."""
    if width <= NATIVE and height <= NATIVE:
        return None
    return (f"The teaching model is made for {NATIVE} x {NATIVE}; at {width} x {height} it draws the same 432 pictures "
            f"larger, from noise of that size, so a seed lands on another picture than at {NATIVE} and each step "
            f"costs more. Use {NATIVE} (or less) to compare with the notebooks.")


def describe() -> str:
    """What the toy model is and the words it knows, in two sentences (its load notice)."""
    n = len(attributes())
    groups = " x ".join(f"{len(v)} {k}s" if k != "colour" else f"{len(v)} colours" for k, v in GROUPS.items())
    words = "; ".join(", ".join(v) for v in GROUPS.values())
    return (f"the built-in teaching model (\"toy\"), an exact denoiser that draws only its own {n} pictures "
            f"({groups}). Words it knows: {words} (and a few synonyms: sdlab.toy.vocabulary()).")
