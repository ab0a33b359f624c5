"""The one set of checks for what a user passes in: arguments, Settings, values read from files and the
environment. Each checks one value where it enters sdlab, returns it in the form sdlab computes with (a
Python int, float, str, a numpy array), or raises an :mod:`sdlab.errors` error that names the argument,
says what was given and what would work.

The same rules everywhere: numpy and torch scalars count as the numbers they hold (``np.float32(7)`` is 7),
booleans are not numbers (``True`` is a flag, never 1), a whole number may be written as a float with no
fraction (``20.0``), and real numbers are finite unless a check says otherwise. Imports numpy only.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import InvalidArgument, WrongType

# More steps than any sampler needs (A1111's slider stops at 150): beyond it a schedule or a plan would only
# take minutes and memory to say the same thing.
MAX_STEPS = 10_000


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    return type(value).__name__


def _scalar(value: Any) -> Any:
    """A numpy / torch scalar (or 0-d array) as the Python number it holds; anything else unchanged."""
    if isinstance(value, (np.generic, np.ndarray)) or type(value).__module__.startswith("torch"):
        if getattr(value, "ndim", None) == 0 or isinstance(value, np.generic):
            try:
                return value.item()
            except (TypeError, ValueError, RuntimeError):
                return value
    return value


def is_flag(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, finite: bool = True, hint: str = "") -> float:
    """A real number in [low, high] (low excluded with ``low_open``), as a Python float."""
    raw = value
    value = _scalar(value)
    what = _range_text(low, high, low_open)
    if is_flag(value) or not isinstance(value, numbers.Real):
        raise WrongType(f"{name} must be a number{what}, not {_kind(raw)} {_shown(raw)}.{hint}", argument=name)
    value = float(value)
    if (finite and not math.isfinite(value)) or math.isnan(value):
        raise InvalidArgument(f"{name} must be a finite number{what}, not {_shown(raw)}.{hint}", argument=name)
    if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
        raise InvalidArgument(f"{name} must be a number{what}, not {_shown(raw)}.{hint}", argument=name)
    return value


def whole(name: str, value: Any, *, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """A whole number in [low, high], as a Python int (``20.0`` counts as 20; ``20.5`` and ``True`` do not)."""
    raw = value
    value = _scalar(value)
    what = _range_text(low, high)
    if is_flag(value) or not isinstance(value, numbers.Real):
        raise WrongType(f"{name} must be a whole number{what}, not {_kind(raw)} {_shown(raw)}.{hint}",
                        argument=name)
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or value != int(value):
            raise InvalidArgument(f"{name} must be a whole number{what}, not {_shown(raw)}.{hint}", argument=name)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidArgument(f"{name} must be a whole number{what}, not {_shown(raw)}.{hint}", argument=name)
    return value


def _range_text(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" from {low}{' (excluded)' if low_open else ''} to {high}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def flag(name: str, value: Any) -> bool:
    """True or False (numpy's bool too); not 0/1, not a string."""
    if is_flag(value):
        return bool(value)
    raise WrongType(f"{name} must be True or False, not {_kind(value)} {_shown(value)}.", argument=name)


def text(name: str, value: Any, *, hint: str = "") -> str:
    if isinstance(value, str):
        return value
    raise WrongType(f"{name} must be a string, not {_kind(value)} {_shown(value)}.{hint}", argument=name)


def prompt(name: str, value: Any) -> str:
    """A prompt: a string that a tokenizer can read, so without lone surrogates (U+D800 to U+DFFF, which
    Python strings can hold and UTF-8 cannot encode; they come from text decoded with errors='surrogateescape')."""
    value = text(name, value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise InvalidArgument(f"{name} holds the character U+{ord(bad):04X} at position {exc.start}, half of a UTF-16 "
                              "pair that no text encoder can read; remove it (or decode the text it came from with "
                              "errors='replace').", argument=name) from None
    return value


def choice(name: str, value: Any, options: Iterable[Any], *, hint: str = "") -> Any:
    """One of ``options`` (compared as given: strings exactly)."""
    options = list(options)
    try:
        if value in options:
            return value
    except TypeError:  # an unhashable value against a set-like container
        pass
    listed = ", ".join(repr(o) for o in options)
    raise InvalidArgument(f"{name} must be one of {listed}, not {_shown(value)}.{hint}", argument=name)


def function(name: str, value: Any, *, none_ok: bool = True) -> Any:
    if (value is None and none_ok) or callable(value):
        return value
    raise WrongType(f"{name} must be a function{' or None' if none_ok else ''}, not {_kind(value)} "
                    f"{_shown(value)}.", argument=name)


def names(name: str, value: Any, *, example: str) -> list[str]:
    """A list of names (a bare string is one name, never its letters)."""
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise WrongType(f"{name} must be a list of names such as {example}, not {_kind(value)} {_shown(value)}.",
                        argument=name) from None
    for item in items:
        if not isinstance(item, str):
            raise WrongType(f"{name} must be a list of names such as {example}; it holds {_kind(item)} "
                            f"{_shown(item)}.", argument=name)
    if not items:
        raise InvalidArgument(f"{name} is empty: give at least one, such as {example}.", argument=name)
    return items


def lab(name: str, value: Any) -> Any:
    """A model loaded with ``sdlab.load``."""
    # known by its class, not imported: checks is the lowest layer, and sdlab.models builds on it
    if any(c.__name__ == "Lab" and c.__module__ == "sdlab.models" for c in type(value).__mro__):
        return value
    raise WrongType(f"{name} must be a model loaded with sdlab.load(...), such as lab = sdlab.load('toy'), not "
                    f"{_kind(value)} {_shown(value)}.", argument=name)


def scheduler(name: str, value: Any) -> Any:
    """A diffusers scheduler object (one with a config and set_timesteps)."""
    if hasattr(value, "config") and callable(getattr(value, "set_timesteps", None)) and not isinstance(value, type):
        return value
    hint = " (a Lab is not one: use lab.default_scheduler, or sdlab.make_scheduler(lab, ...))" \
        if hasattr(value, "default_scheduler") else ""
    raise WrongType(f"{name} must be a diffusers scheduler, such as sdlab.make_scheduler(lab, 'Euler', 'Karras'), not "
                    f"{_kind(value)} {_shown(value)}{hint}.", argument=name)


def reals(name: str, value: Any, *, low: float | None = None, high: float | None = None,
          max_size: int = 10 ** 7, keep_shape: bool = False) -> np.ndarray:
    """A number or an array of them (as float64, at least 1-d unless ``keep_shape``), each finite and in
    [low, high]."""
    if is_flag(value) or isinstance(value, (str, bytes)) or value is None:
        raise WrongType(f"{name} must be a number or an array of numbers, not {_kind(value)} {_shown(value)}.",
                        argument=name)
    try:
        arr = np.atleast_1d(np.asarray(_scalar(value), dtype=np.float64))
    except (TypeError, ValueError):
        raise WrongType(f"{name} must be a number or an array of numbers, not {_kind(value)} {_shown(value)}.",
                        argument=name) from None
    if arr.ndim > 1 and not keep_shape:
        raise InvalidArgument(f"{name} must be a number or a flat list of numbers, not an array of shape {arr.shape}.",
                              argument=name)
    if arr.size == 0 or arr.size > max_size:
        raise InvalidArgument(f"{name} must hold from 1 to {max_size} numbers, not {arr.size}.", argument=name)
    bad = ~np.isfinite(arr)
    if low is not None:
        bad |= arr < low
    if high is not None:
        bad |= arr > high
    if bad.any():
        raise InvalidArgument(f"{name} must hold finite numbers{_range_text(low, high)}; it holds "
                              f"{_shown(arr[bad][0])}.", argument=name)
    return arr.reshape(np.shape(_scalar(value))) if keep_shape else arr


def wholes(name: str, value: Any, *, low: int | None = None, high: int | None = None, hint: str = "") -> list[int]:
    """A list of whole numbers (one whole number is a list of one)."""
    if isinstance(_scalar(value), numbers.Real) and not is_flag(value) or value is None or isinstance(value, str):
        return [whole(name, value, low=low, high=high, hint=hint)]
    try:
        items = list(value)
    except TypeError:
        raise WrongType(f"{name} must be a list of whole numbers, not {_kind(value)} {_shown(value)}.",
                        argument=name) from None
    if not items:
        raise InvalidArgument(f"{name} is empty: give at least one whole number.", argument=name)
    return [whole(name, v, low=low, high=high, hint=hint) for v in items]


def executor(name: str, value: Any) -> Any:
    """None, or something to submit work to: a dask.distributed.Client or a concurrent.futures.Executor."""
    if value is None or callable(getattr(value, "submit", None)):
        return value
    raise WrongType(f"{name} must be a dask.distributed.Client or a concurrent.futures.Executor (or None), not "
                    f"{_kind(value)}.", argument=name)


def latents(name: str, value: Any, *, channels: int | None = None, size: tuple[int, int] | None = None):
    """Latents as a float torch tensor (B, C, h, w) (a single C x h x w gets a batch of one): finite, with
    ``channels`` channels and, where the receiver has one, the latent size ``size`` (h, w)."""
    import torch

    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() and value.dtype not in (torch.int64,):
        raise WrongType(f"{name} must be a float tensor of latents (B, C, h, w), such as run.final_latents, not "
                        f"{_kind(value)} {_shown(value)}.", argument=name)
    z = value[None] if value.ndim == 3 else value
    if z.ndim != 4 or z.shape[0] < 1 or (channels is not None and z.shape[1] != channels) or min(z.shape[2:]) < 1:
        want = f"(B, {channels}, h, w)" if channels is not None else "(B, C, h, w)"
        raise InvalidArgument(f"{name} must have the shape {want}, not {tuple(value.shape)}.", argument=name)
    if size is not None and tuple(z.shape[2:]) != tuple(size):
        raise InvalidArgument(f"{name} are {z.shape[2]}x{z.shape[3]} latents (h x w); this needs {size[0]}x{size[1]}.",
                              argument=name)
    if not bool(torch.isfinite(z).all()):
        raise InvalidArgument(f"{name} hold NaN or infinite values.", argument=name)
    return z.float() if not z.is_floating_point() else z


def output_file(name: str, value: Any, *, suffix: str | tuple[str, ...] = ".png", create_folder: bool = True) -> Path:
    """A path a file can be written to: not a folder, its name fits the file system and ends in ``suffix``,
    its folder exists (``create_folder``: is made) and can be written to."""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, (str, os.PathLike)):
        raise WrongType(f"{name} must be a file path (a string or pathlib.Path), not {_kind(value)} {_shown(value)}.",
                        argument=name)
    path = Path(value).expanduser()
    if str(value) == "" or "\x00" in str(value):
        raise InvalidArgument(f"{name} must name a file, not {_shown(value)}.", argument=name)
    suffixes = (suffix,) if isinstance(suffix, str) else tuple(suffix)
    folder = path.parent
    try:
        limit = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    if any(len(os.fsencode(part)) > limit for part in path.parts):
        raise InvalidArgument(f"{name}: a name in {_shown(str(path))} is longer than this file system allows ({limit} "
                              "bytes); use a shorter name.", argument=name)
    if path.is_dir():
        raise InvalidArgument(f"{name}={str(path)!r} is a folder: give a file name in it, such as "
                              f"{str(path / ('run' + suffixes[0]))!r}.", argument=name)
    if path.suffix.lower() not in suffixes:
        raise InvalidArgument(f"{name} must end in {' or '.join(suffixes)}, not {path.suffix or 'no suffix'!r} "
                              f"({str(path)!r:.80}).", argument=name)
    if not folder.is_dir():
        if not create_folder:
            raise InvalidArgument(f"{name}: the folder {str(folder)!r} does not exist; create it first.",
                                  argument=name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgument(f"{name}: the folder {str(folder)!r} cannot be created ({exc.strerror or exc}); "
                                  "save somewhere else.", argument=name) from None
    if not os.access(folder, os.W_OK):
        raise InvalidArgument(f"{name}: the folder {str(folder)!r} cannot be written to; save somewhere else.",
                              argument=name)
    return path


def write_atomically(path: Path, write) -> None:
    """``write(temporary_path)``, then rename it to ``path``: a failed write (a full disk) leaves no
    truncated file and keeps any file that was there."""
    import uuid

    # beside the file (a rename within one folder is atomic), short whatever the name, the suffix kept for
    # writers that choose the format by it
    tmp = path.with_name(f".sdlab-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
