"""Classifier-free guidance, and the three-prediction variant as an experiment.

diffusers and A1111 compute two predictions per step: eps_u for the negative prompt (empty when there
is none) and eps_c for the prompt, then eps = eps_u + s (eps_c - eps_u). The negative prompt simply
takes the unconditional slot.

Some write-ups (the Habr article "Погружение в Sampling method: механизмы работы в моделях диффузии", a
deep dive into sampling methods) describe three predictions:
unconditional (empty prompt), positive and negative, combined as
    eps = eps_empty + s (eps_pos - eps_empty) - s_neg (eps_neg - eps_empty).
``three_way_guidance`` lets a reader try that without re-implementing the pipeline: a forward hook on
the UNet makes one extra UNet call on the empty prompt and hands the pipeline a (u', c') pair whose
ordinary CFG combination (1 - s) u' + s c' equals the three-way formula:
    c' = eps_pos,   u' = eps_empty + s_neg / (s - 1) * (eps_neg - eps_empty).
This changes the result on purpose (it is an experiment) and costs one more UNet call per step.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from .errors import InvalidArgument


@dataclass
class ThreeWay:
    """What the experiment did: extra UNet calls, and per step the sizes of the three predictions."""

    negative_scale: float
    extra_calls: int = 0
    norms: list[dict[str, float]] = field(default_factory=list)


@contextmanager
def three_way_guidance(lab, negative_scale: float = 1.0, cfg: float = 7.0):
    """Within this block, runs on ``lab`` use three predictions per step (see the module docstring).

    cfg must be the guidance scale of the runs made inside (it appears in u'); it must not be 1."""
    if cfg == 1:
        raise InvalidArgument("The three-way rewrite divides by (cfg - 1); use a guidance scale other than 1.")
    pipe = lab.pipe
    encoded = pipe.encode_prompt(prompt="", device=pipe.device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
    empty = encoded[0]
    empty_pooled = encoded[2] if len(encoded) > 2 else None  # SDXL's pooled text embedding
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        # SDXL's own unconditional input for an empty prompt is zeros: use the same here
        empty = torch.zeros_like(empty)
        empty_pooled = torch.zeros_like(empty_pooled) if empty_pooled is not None else None
    state = ThreeWay(negative_scale=float(negative_scale))

    def hook(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[0] % 2:  # no CFG batch in this call: leave it alone
            return output
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        ctx = kwargs.get("encoder_hidden_states")
        half = sample.shape[0] // 2
        extra = {k: v for k, v in kwargs.items() if k not in ("sample", "timestep", "encoder_hidden_states")}
        extra["return_dict"] = False
        added = extra.get("added_cond_kwargs")
        if added:  # SDXL: the positive half of its extra conditioning, with the empty prompt's pooled embedding
            added = {k: v[half:] for k, v in added.items()}
            if empty_pooled is not None and "text_embeds" in added:
                added["text_embeds"] = empty_pooled.expand(half, -1).to(added["text_embeds"].dtype)
            extra["added_cond_kwargs"] = added
        # module.forward, not module(...): no hooks (sdlab's recording included) see this extra call
        eps_empty = module.forward(sample[half:], timestep, encoder_hidden_states=empty.expand(half, -1, -1).to(ctx.dtype),
                                   **extra)[0]
        state.extra_calls += 1
        pred = output[0] if isinstance(output, tuple) else output.sample
        eps_neg, eps_pos = pred.chunk(2)
        u = eps_empty + (state.negative_scale / (cfg - 1)) * (eps_neg - eps_empty)
        state.norms.append({"empty": float(eps_empty.norm()), "positive": float(eps_pos.norm()),
                            "negative": float(eps_neg.norm()), "negative - empty": float((eps_neg - eps_empty).norm())})
        new = torch.cat([u, eps_pos])
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else type(output)(sample=new)

    handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()
