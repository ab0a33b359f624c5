"""What a run regenerated from an A1111 infotext will compute differently from A1111's own result.

A1111 writes its settings into each PNG (modules/processing.py ``create_infotext``). sdlab reads the ones it
can use (``infotext.parse_infotext``); this module says, from the rest and from the sampler, which parts of
A1111's result sdlab cannot reproduce, so that a different picture is explained rather than silent:

- the sampler's numerics (``Sampler.matches_a1111`` and its ``fidelity`` text, from the catalog);
- the noise source: A1111 draws the starting noise with ``torch.randn`` on the GPU by default
  (option ``randn_source``, written as ``RNG: CPU`` / ``RNG: NV`` only when not "GPU", modules/rng.py);
  sdlab, like diffusers, draws it with a CPU ``torch.Generator``, and gives a batch one generator where
  A1111 seeds image i with seed + i;
- ``ENSD`` (eta noise seed delta), which offsets the seed of A1111's per-step sampler noise;
- ``Clip skip`` above 1 (A1111 takes the text encoder's earlier layer);
- A1111's prompt syntax: emphasis ``(word:1.2)``, ``(word)``, ``[word]``, ``BREAK``, ``<lora:...>``,
  which diffusers reads as plain text (modules/prompt_parser.py parses it in A1111);
- a second pass (Hires fix, img2img denoising), a variation seed, another model, and any other field.

Data in, sentences out: no pipeline, no widgets.
"""
from __future__ import annotations

import re
from pathlib import Path

ORIGIN = "A1111 infotext"  # Settings.origin of settings read from an A1111 infotext

# A1111's emphasis and prompt-editing syntax (modules/prompt_parser.py re_attention, re_break; extra networks
# <lora:name:weight> from modules/extra_networks.py); "\(" is a literal bracket there, so not counted.
_RE_EMPHASIS = re.compile(r"(?<!\\)\((?:[^()]|\\[()])*?:\s*-?[\d.]+\s*\)|(?<!\\)\([^()]*\)|(?<!\\)\[[^\[\]]*\]")
_RE_BREAK = re.compile(r"\bBREAK\b")
_RE_NETWORK = re.compile(r"<(lora|lyco|hypernet)\s*:[^>]*>", re.IGNORECASE)

# Fields parse_infotext reads into Settings, or that change nothing in the picture
_USED = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Batch size", "Eta"}
_HARMLESS = {"Version", "Model hash", "VAE hash", "Lora hashes", "TI hashes", "Emphasis", "Pad conds",
             "Token merging ratio", "NGMS", "Downcast alphas_cumprod"}
_SECOND_PASS = ("Denoising strength", "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler",
                "Hires sampler", "Hires schedule type", "Hires CFG Scale", "Hires prompt", "Mask blur")
_VARIATION = ("Variation seed", "Variation seed strength", "Seed resize from")


def prompt_syntax(text: str) -> list[str]:
    """The pieces of A1111 prompt syntax in ``text`` that diffusers would read as plain words."""
    found = [m.group(0) for m in _RE_EMPHASIS.finditer(text or "")]
    found += [m.group(0) for m in _RE_NETWORK.finditer(text or "")]
    found += ["BREAK"] if _RE_BREAK.search(text or "") else []
    return found


def differences(settings, sampler=None, model: str | None = None) -> list[str]:
    """What will differ from A1111's own picture when ``settings`` read from an A1111 infotext are run.

    sampler: the resolved catalog entry (``Sampler``), when the sampler is known; model: the source of the
    model that will run (``lab.source``). Empty for settings that did not come from A1111.
    """
    if getattr(settings, "origin", None) != ORIGIN:
        return []
    extra = dict(settings.extra or {})
    out: list[str] = []

    if sampler is not None and sampler.matches_a1111 is False:
        out.append(f"A1111's {sampler.a1111 or sampler.name} is not reproduced exactly: {sampler.fidelity}")
    elif sampler is not None and sampler.matches_a1111 is None:
        out.append(f"{sampler.name} is not an A1111 sampler; the infotext named {extra.get('Sampler', sampler.name)!r}.")

    rng = extra.get("RNG", "GPU")
    if rng == "CPU":
        if settings.batch_size > 1:
            out.append("RNG: CPU: A1111 seeds image i of a batch with seed + i; sdlab draws the whole batch from one "
                       "generator seeded with the seed, so the images after the first start from other noise.")
    else:
        what = "the GPU (RNG: GPU, A1111's default)" if rng == "GPU" else f"{rng} (RNG: {rng})"
        out.append(f"A1111 drew the starting noise on {what}; sdlab draws it with a CPU torch.Generator, so the same "
                   "seed gives other noise and another picture. Set A1111's option 'Random number generator source' "
                   "to CPU to make pictures that sdlab can reproduce.")

    ensd = extra.get("ENSD")
    if ensd not in (None, "", "0") and sampler is not None and sampler.stochastic:
        out.append(f"ENSD: {ensd}: A1111 seeded its sampler's per-step noise with seed + {ensd}; sdlab's {sampler.name} "
                   "draws it from the run's own generator, so the noise added during sampling differs.")

    clip_skip = extra.get("Clip skip")
    if clip_skip not in (None, "", "1"):
        out.append(f"Clip skip: {clip_skip}: A1111 conditioned on the text encoder's layer {clip_skip} from the end; "
                   "sdlab uses its last layer, as diffusers does by default.")

    for name, text in (("prompt", settings.prompt), ("negative prompt", settings.negative_prompt)):
        syntax = prompt_syntax(text)
        if syntax:
            shown = ", ".join(dict.fromkeys(syntax[:4]))
            out.append(f"The {name} uses A1111 syntax ({shown}{', ...' if len(syntax) > 4 else ''}): A1111 weights "
                       "or loads those parts; diffusers reads brackets, weights and tags as plain text.")

    second = [k for k in _SECOND_PASS if k in extra]
    if second:
        out.append(f"A1111 ran a second pass ({', '.join(f'{k}: {extra[k]}' for k in second[:3])}); sdlab runs the "
                   "text-to-image pass only, so this is the picture before it.")
    variation = [k for k in _VARIATION if k in extra]
    if variation:
        out.append(f"A1111 mixed in a variation seed ({', '.join(f'{k}: {extra[k]}' for k in variation)}); sdlab "
                   "uses the main seed only.")

    wanted = extra.get("Model")
    if wanted and (model is None or Path(str(model)).stem != wanted):
        out.append(f"A1111 used the model {wanted!r}{' (hash ' + extra['Model hash'] + ')' if 'Model hash' in extra else ''}; "
                   f"this run uses {model!r}.")
    elif "Model hash" in extra and not wanted:
        out.append(f"A1111 used the model with hash {extra['Model hash']}; sdlab cannot check that it is {model!r}.")

    handled = _USED | _HARMLESS | set(_SECOND_PASS) | set(_VARIATION) | {"RNG", "ENSD", "Clip skip", "Model"}
    rest = [k for k in extra if k not in handled and k != "Sampler"]
    if rest:
        out.append(f"Not used by sdlab: {', '.join(f'{k}: {extra[k]}' for k in rest)}.")
    return out

