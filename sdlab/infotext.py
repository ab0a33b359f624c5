"""Reproducible images: A1111-style infotext in PNGs, and reading settings back from PNGs or infotext.

A saved PNG carries two text chunks: ``parameters``, the A1111 infotext that A1111, ComfyUI and image sites
read (written as A1111's modules/infotext_utils.py and processing.py write it: prompt, "Negative prompt:",
then "Key: value" pairs), and ``sdlab``, the full settings as JSON (model and family, sampler, schedule,
the scheduler's config changes, seed, device, dtype, size, package versions).

A run is read duck-typed (its settings, report and records), so this module needs nothing from generation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import checks
from .errors import InvalidArgument, MissingFile, SdlabError, WrongType
from . import noise_schedules as S
from .a1111 import ORIGIN
from .sampler_catalog import CATALOG, parse_sampler
from .settings import SETTING_NAMES, Settings

SDLAB_CHUNK = "sdlab"
A1111_CHUNK = "parameters"
# A1111's own pattern for "Key: value" pairs (modules/infotext_utils.py re_param), quoted values allowed.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _quote(value: Any) -> str:
    text = str(value)
    if "," in text or "\n" in text or ":" in text or '"' in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def format_infotext(run, index: int = 0) -> str:
    """The A1111 infotext of image ``index`` of the run: its own seed (and variation seed), as A1111 writes
    each image of a batch (modules/processing.py create_infotext)."""
    from .rng import image_seeds

    s = run.settings
    custom = s.scheduler_config is not None and (s.schedule == "custom" or s.sampler not in CATALOG)
    params = {"Steps": s.steps, "Sampler": s.sampler, "Schedule type": None if custom else S.schedule_label(s.schedule),
              "CFG scale": f"{s.cfg:g}", "Seed": image_seeds(s.seed, s.batch_size, s.subseed_strength)[index],
              "Size": f"{s.width}x{s.height}",
              "Model": Path(run.model).stem if run.model else None}
    if s.batch_size > 1:
        params["Batch size"] = s.batch_size
    if s.eta is not None:
        params["Eta"] = s.eta
    if getattr(s, "clip_skip", 1) != 1:  # A1111 writes Clip skip only above 1 (processing.py create_infotext)
        params["Clip skip"] = s.clip_skip
    if getattr(s, "emphasis", "original") != "original":
        from .prompt_syntax import EMPHASIS_LABEL

        params["Emphasis"] = EMPHASIS_LABEL.get(s.emphasis, s.emphasis)
    if getattr(run, "padded_conds", False):  # the prompt and the negative prompt took different chunk counts
        params["Pad conds"] = True
    # the noise, with A1111's field names (modules/processing.py create_infotext: RNG only when not GPU)
    from .rng import RNG_LABEL

    source = getattr(s, "rng", "cpu")
    if source != "gpu":
        params["RNG"] = RNG_LABEL.get(source, source)
    entry = CATALOG.get(s.sampler)
    if getattr(s, "ensd", 0) and ((entry is not None and entry.stochastic) or (s.eta or 0) > 0):
        params["ENSD"] = s.ensd  # (A1111 writes it only for samplers whose noise it changes)
    if getattr(s, "subseed_strength", 0):
        params["Variation seed"] = s.subseed + index
        params["Variation seed strength"] = str(float(s.subseed_strength))
    if getattr(s, "seed_resize_from", None):
        params["Seed resize from"] = f"{s.seed_resize_from[0]}x{s.seed_resize_from[1]}"
    for key, value in s.schedule_params.items():
        params[f"Schedule {key}"] = value
    if custom:  # no catalog sampler and schedule: say so; the sdlab chunk holds the whole config
        params["Custom scheduler"] = s.scheduler_config.get("_class_name")
    if run.stopped:
        params["Stopped at step"] = run.records[-1].step if run.records else 0
    params["Version"] = f"sdlab {_version()}"
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    text = s.prompt
    if s.negative_prompt:
        text += f"\nNegative prompt: {s.negative_prompt}"
    return f"{text}\n{line}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdlab")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def settings_json(run) -> dict:
    import diffusers
    import torch
    import transformers

    return {
        "settings": run.settings.to_dict(),
        "model": run.model, "family": run.family, "device": run.device, "dtype": run.dtype,
        "scheduler": run.scheduler_report, "stopped": run.stopped,
        "nfe": run.nfe, "steps_recorded": len(run.records), "torch_threads": run.threads,
        "versions": {"sdlab": _version(), "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
    }


def save_png(run, path, *, index: int = 0) -> Path:
    """Write image ``index`` of the run as a PNG with infotext and sdlab JSON; returns the path."""
    from PIL.PngImagePlugin import PngInfo

    if not run.images:
        raise InvalidArgument("This run has no image yet (it is still going, or failed); wait for it first.")
    if run.stopped:  # its image decodes half-denoised latents, which its settings (written below) would not make
        done = run.records[-1].step if run.records else 0
        raise InvalidArgument(f"This run was stopped at step {done} of {run.settings.steps}: its settings regenerate "
                              "the finished picture, not this one, so it is not saved with them. Run it to the end "
                              "to save it (in the Studio: restore, then Generate), or keep what it showed: "
                              "run.steps[-1].picture().save('stopped.png').", argument="run")
    index = checks.whole("index", index, low=-len(run.images), high=len(run.images) - 1)
    path = checks.output_file("path", path, suffix=".png")  # .png: the settings travel with the picture
    info = PngInfo()
    info.add_text(A1111_CHUNK, format_infotext(run, index % len(run.images)))
    data = settings_json(run)
    data["image_index"] = index
    info.add_text(SDLAB_CHUNK, json.dumps(data))
    image = run.images[index]
    try:  # a full disk or a vanished folder leaves no truncated PNG, and keeps a file that was there
        checks.write_atomically(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    except OSError as exc:
        raise InvalidArgument(f"path: could not write {str(path)!r} ({exc.strerror or exc}); nothing was written. "
                              "Free some space or save somewhere else.", argument="path") from None
    return path


def read_settings(source) -> Settings:
    """Settings that regenerate an image: from an sdlab PNG, an A1111 PNG (path, bytes or PIL image) or an
    A1111 infotext string. Fields sdlab does not use are kept in ``settings.extra``."""
    text, data = _texts(source)
    if data is not None:
        try:
            raw = json.loads(data)["settings"]
            if not isinstance(raw, dict):
                raise TypeError
            fields = {k: v for k, v in raw.items() if k in SETTING_NAMES}
            if isinstance(fields.get("seed_resize_from"), list):  # (JSON has no tuples)
                fields["seed_resize_from"] = tuple(fields["seed_resize_from"])
            return Settings(**{**fields, "origin": "sdlab"})
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            if text is None:
                raise InvalidArgument(f"The image's sdlab settings (PNG text '{SDLAB_CHUNK}') are damaged and it has no "
                                 "A1111 text to fall back on; nothing to read.") from exc
            from .notices import notice

            notice(f"sdlab: the image's sdlab settings are damaged; reading its A1111 '{A1111_CHUNK}' text instead.")
    if text is None:
        raise InvalidArgument("No generation settings found: the image has neither sdlab's nor A1111's 'parameters' text.")
    return parse_infotext(text)


def _texts(source) -> tuple[str | None, str | None]:
    from PIL import Image

    if isinstance(source, str) and ("\n" in source or "Steps:" in source) and not Path(source).suffix == ".png":
        return source, None
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, or with a NUL: not a file
            is_file = False
        if not is_file:
            shown = str(path) if len(str(path)) <= 80 else str(path)[:77] + "..."
            raise MissingFile(f"source: no such image: {shown!r} (pass a PNG path, a PIL image, or an A1111 "
                                    "infotext string, which has a 'Steps: ...' line).")
        meta = _metadata(path, str(path))
    elif isinstance(source, (bytes, bytearray)):
        import io

        meta = _metadata(io.BytesIO(source), f"the {len(source)} bytes given")
    elif isinstance(source, Image.Image):
        meta = dict(getattr(source, "text", None) or source.info)
    else:
        raise WrongType(f"source must be a PNG path, bytes, a PIL image or an infotext string, not {type(source).__name__}.",
                        argument="source")
    return meta.get(A1111_CHUNK), meta.get(SDLAB_CHUNK)


def _metadata(file, name: str) -> dict:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img.load()
            return dict(getattr(img, "text", None) or img.info)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidArgument(f"source: cannot read {name} as an image ({type(exc).__name__}: {exc}). Pass a PNG saved by sdlab "
                         "or A1111, a PIL image, or the infotext itself as a string.", argument="source") from exc


def _field(key: str, value: str, convert, kind: str | None = None):
    """An infotext field's value converted (int, float, or a checker of names), or an error naming the field."""
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError):
        kind = kind or ("a whole number" if convert is int else "a number")
        raise InvalidArgument(f"The infotext's '{key}: {value}' is not {kind}; correct or remove that field.",
                              argument="text") from None


def _size(value: str) -> tuple[int, int] | None:
    """(width, height) of an infotext's "WxH", or None when it is not one."""
    m = _RE_SIZE.match(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_infotext(text: str) -> Settings:
    """Parse A1111's infotext: prompt lines, 'Negative prompt:' lines, then the 'Key: value, ...' line."""
    text = checks.text("text", text, hint=" Pass the infotext itself (A1111's 'parameters' text); "
                       "sdlab.read_settings reads it from a PNG.")
    lines = text.strip().split("\n")
    params_line = lines[-1] if len(_RE_PARAM.findall(lines[-1])) >= 3 else ""
    body = lines[:-1] if params_line else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    values: dict[str, str] = {}
    for key, value in _RE_PARAM.findall(params_line):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:  # A1111 quotes a value that holds a comma or a colon, JSON-style
                value = json.loads(value)
            except (ValueError, RecursionError):
                value = value[1:-1]  # not JSON after all: the text between the quotes, as written
        values[key.strip()] = value
    settings: dict[str, Any] = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    extra: dict[str, str] = {}
    schedule_params: dict[str, float] = {}
    schedule_from_sampler = None
    for key, value in values.items():
        if key == "Steps":
            settings["steps"] = _field(key, value, int)
        elif key == "Sampler":
            try:
                spec, legacy = parse_sampler(value)
                settings["sampler"], schedule_from_sampler = spec.name, legacy
            except SdlabError:
                settings["sampler"] = value  # unknown to sdlab: generate() will say so, naming it
                extra["Sampler"] = value
        elif key == "Schedule type":
            try:
                settings["schedule"] = S.resolve_schedule(value)
            except SdlabError:  # kept as written: generate() refuses it, naming it, rather than run another
                settings["schedule"] = value
                extra[key] = value
        elif key == "CFG scale":
            settings["cfg"] = _field(key, value, float)
        elif key == "Seed":
            settings["seed"] = _field(key, value, int)
        elif key == "Size" and _size(value):
            settings["width"], settings["height"] = _size(value)
        elif key == "Batch size":
            settings["batch_size"] = _field(key, value, int)
        elif key == "Eta":
            settings["eta"] = _field(key, value, float)
        elif key == "RNG":
            from .rng import source_name

            settings["rng"] = _field(key, value, source_name, "one of A1111's random sources (CPU, GPU, NV)")
        elif key == "ENSD":
            settings["ensd"] = _field(key, value, int)
        elif key == "Variation seed":
            settings["subseed"] = _field(key, value, int)
        elif key == "Variation seed strength":
            settings["subseed_strength"] = _field(key, value, float)
        elif key == "Seed resize from" and _size(value):
            settings["seed_resize_from"] = _size(value)
        elif key == "Clip skip":
            settings["clip_skip"] = _field(key, value, int)
        elif key == "Emphasis":  # A1111's name ("No norm") -> sdlab's ("no_norm")
            from .prompt_syntax import emphasis_mode

            settings["emphasis"] = _field(key, value, emphasis_mode,
                                          "one of A1111's emphasis modes (Original, No norm, Ignore, None)")
        elif _schedule_param(key) is not None and _number(value) is not None:
            schedule_params[_schedule_param(key)] = _number(value)
        else:
            extra[key] = value
    if schedule_from_sampler and "schedule" not in settings:
        settings["schedule"] = schedule_from_sampler
    known = S.SCHEDULES.get(settings.get("schedule", ""))
    for name, number in schedule_params.items():  # only the parameters the schedule has
        if known is not None and name in known.params:
            settings.setdefault("schedule_params", {})[name] = number
        else:
            extra[f"Schedule {name}"] = number
    settings.setdefault("rng", "gpu")  # an A1111 infotext without RNG: A1111's default source, the GPU
    if settings.get("subseed_strength") and "subseed" not in settings:
        settings["subseed_strength"] = 0.0  # (a strength without its seed: A1111 writes both or neither)
    settings["extra"] = extra
    settings["origin"] = ORIGIN
    return Settings(**settings)


# sdlab writes "Schedule <param>"; A1111 writes "Schedule rho" (karras / polyexponential override) and
# "Beta schedule alpha" / "Beta schedule beta" (modules/sd_schedulers.py beta_dist_alpha, beta_dist_beta)
_RE_SCHEDULE_PARAM = re.compile(r"^(?:Beta schedule|Schedule) (\w+)$")


def _schedule_param(key: str) -> str | None:
    m = _RE_SCHEDULE_PARAM.match(key)
    return m.group(1) if m else None


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
