"""What a run regenerated from an A1111 infotext will compute differently from A1111's own result.

A1111 writes its settings into each PNG (modules/processing.py ``create_infotext``). sdlab reads the ones it
can use (``infotext.parse_infotext``); this module says, from the rest and from the sampler, which parts of
A1111's result sdlab cannot reproduce, so that a different picture is explained rather than silent:

- the sampler's numerics (``Sampler.matches_a1111`` and its ``fidelity`` text, from the catalog);
- not the noise: the random source (``RNG:``, GPU when absent, emulated as NV without a GPU), ``ENSD``, the
  variation seed and ``Seed resize from`` are read into the settings and drawn as A1111 draws them
  (sdlab.rng); where a GPU's noise is emulated, preparing the run says so;
- A1111's prompt syntax only where the settings ask for ``prompt_syntax="plain"``: by default sdlab reads
  emphasis, ``BREAK``, prompt editing, alternation, long prompts and Clip skip as A1111 does
  (sdlab.prompt_encoding); extra-network tags and ``AND`` are said by the run's prompt plan;
- A1111's old prompt-editing timeline (infotext ``Old prompt editing timelines: True``), and a prompt and
  negative prompt of different chunk counts that A1111 ran unpadded (no ``Pad conds: True``);
- a second pass (Hires fix, img2img denoising), another model, and any other field.

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
_USED = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Batch size", "Eta", "Clip skip",
         "Emphasis", "RNG", "ENSD", "Variation seed", "Variation seed strength", "Seed resize from"}
_HARMLESS = {"Version", "Model hash", "VAE hash", "Lora hashes", "TI hashes", "Pad conds",
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

    if getattr(settings, "prompt_syntax", "auto") == "plain":
        for name, text in (("prompt", settings.prompt), ("negative prompt", settings.negative_prompt)):
            syntax = prompt_syntax(text)
            if syntax:
                shown = ", ".join(dict.fromkeys(syntax[:4]))
                out.append(f"The {name} uses A1111 syntax ({shown}{', ...' if len(syntax) > 4 else ''}) and "
                           "prompt_syntax='plain' sends it as plain text: A1111 weights or loads those parts. Leave "
                           "prompt_syntax at 'auto' to read it as A1111 does.")
    if extra.get("Old prompt editing timelines") == "True":
        out.append("Old prompt editing timelines: True: A1111 read [a:b:1.0]-style numbers of 1 and above as step "
                   "numbers; sdlab reads a number with a decimal point as a fraction of the steps (A1111's current "
                   "rule), so a prompt edit may switch at another step.")

    second = [k for k in _SECOND_PASS if k in extra]
    if second:
        out.append(f"A1111 ran a second pass ({', '.join(f'{k}: {extra[k]}' for k in second[:3])}); sdlab runs the "
                   "text-to-image pass only, so this is the picture before it.")

    wanted = extra.get("Model")
    if wanted and (model is None or Path(str(model)).stem != wanted):
        out.append(f"A1111 used the model {wanted!r}{' (hash ' + extra['Model hash'] + ')' if 'Model hash' in extra else ''}; "
                   f"this run uses {model!r}.")
    elif "Model hash" in extra and not wanted:
        out.append(f"A1111 used the model with hash {extra['Model hash']}; sdlab cannot check that it is {model!r}.")

    handled = _USED | _HARMLESS | set(_SECOND_PASS) | set(_VARIATION) | {"RNG", "ENSD", "Model",
                                                                         "Old prompt editing timelines"}
    rest = [k for k in extra if k not in handled and k != "Sampler"]
    if rest:
        out.append(f"Not used by sdlab: {', '.join(f'{k}: {extra[k]}' for k in rest)}.")
    return out


def padding_difference(settings, padded: bool) -> list[str]:
    """What differs when sdlab padded the prompt and the negative prompt to one chunk count and A1111 did not
    (its option "Pad prompt/negative prompt to be same length" off: no ``Pad conds: True`` in the infotext)."""
    if getattr(settings, "origin", None) != ORIGIN or not padded or (settings.extra or {}).get("Pad conds") == "True":
        return []
    return ["The prompt and the negative prompt take different numbers of 75-token chunks: A1111 (without its option "
            "'Pad prompt/negative prompt to be same length') ran them through the UNet unpadded, each at its own "
            "length; diffusers' pipeline takes one tensor for both, so sdlab pads the shorter with empty chunks, as "
            "that option does, and the picture differs slightly."]
