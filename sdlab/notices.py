"""How sdlab tells the user something without stopping them.

Two warning classes, so that users (and the test suite) can filter them apart:
``SdlabNotice`` is an expected, visible message (a fallback to the built-in model, a throttled
preview); ``SdlabWarning`` means something is probably wrong and the user should act.

They stay Python warnings (``warnings.simplefilter("ignore", sdlab.SdlabNotice)`` silences them, and
``pytest.warns`` sees them), but they are shown as what they are, sentences: a notice on standard output,
a warning on standard error, neither with the file, line and source line Python's warnings print, and
each notice once per session (the same sentence from the next run says nothing new; a run keeps its
own in ``run.problems``).
"""
from __future__ import annotations

import logging
import sys
import threading
import warnings


class SdlabNotice(UserWarning):
    """Something the user should see but need not fix (e.g. 'using the built-in tiny model')."""


class SdlabWarning(UserWarning):
    """Something that is probably wrong; the message says what to do."""


_SAID: set[str] = set()  # the notices already shown in this session
_SAID_LOCK = threading.Lock()


def notice(message: str, *, stacklevel: int = 3) -> None:
    """Say ``message`` once in this session (``forget_notices()`` lets it be said again)."""
    with _SAID_LOCK:
        if message in _SAID:
            return
        _SAID.add(message)
    warnings.warn(message, SdlabNotice, stacklevel=stacklevel)


def mark_said(message: str) -> None:
    """Count ``message`` as said (where another process said it to the user already)."""
    with _SAID_LOCK:
        _SAID.add(message)


def forget_notices() -> None:
    """Let every notice be shown again (each is shown once per session)."""
    with _SAID_LOCK:
        _SAID.clear()


def warn(message: str, *, stacklevel: int = 3) -> None:
    warnings.warn(message, SdlabWarning, stacklevel=stacklevel)


def _showwarning(message, category, filename, lineno, file=None, line=None):
    """sdlab's notices and warnings as plain sentences; every other warning as Python shows it."""
    if file is None and isinstance(category, type) and issubclass(category, (SdlabNotice, SdlabWarning)):
        stream = sys.stdout if issubclass(category, SdlabNotice) else sys.stderr
        try:
            stream.write(f"{message}\n")
        except (OSError, ValueError, AttributeError):  # a closed or missing stream: nowhere to say it
            pass
        return
    _python_showwarning(message, category, filename, lineno, file, line)


if getattr(warnings.showwarning, "__module__", None) != __name__:  # (once, even if this module is reloaded)
    _python_showwarning = warnings.showwarning  # whatever showed warnings before: it shows all the others
    warnings.showwarning = _showwarning


class _TorchvisionFallbackFilter(logging.Filter):
    """transformers announces, on every import of the SD pipelines, that its image processors fall back
    to PIL when torchvision is absent. sdlab needs no torchvision (the PIL path is the one SD always
    used), so that red block in every notebook says nothing a user should act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())


class _SaidAlready(threading.local):
    """Set while sdlab runs a pipeline in this thread (generation's ``_run``)."""

    depth = 0


said_already = _SaidAlready()


class _TruncationFilter(logging.Filter):
    """diffusers logs "The following part of your input was truncated because CLIP can only handle
    sequences up to 77 tokens" when it cuts a prompt (pipeline_stable_diffusion.py's encode_prompt). In an
    sdlab run that is said already, in one notice with the dropped words and what A1111 would do, so the
    red line is dropped there; a plain ``lab.pipe(...)`` call keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (said_already.depth and any(m in record.getMessage() for m in _SAID_BY_SDLAB))


# what diffusers and transformers log about a prompt longer than CLIP's 77 tokens (the second comes from the
# tokenizer diffusers' encode_prompt calls without truncation to find the cut words)
_SAID_BY_SDLAB = ("was truncated because CLIP", "Token indices sequence length is longer than the specified")


_truncation = _TruncationFilter()
for _name in ("stable_diffusion.pipeline_stable_diffusion", "stable_diffusion.pipeline_stable_diffusion_img2img",
              "stable_diffusion.pipeline_stable_diffusion_inpaint", "stable_diffusion_xl.pipeline_stable_diffusion_xl",
              "stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
              "stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint"):
    logging.getLogger(f"diffusers.pipelines.{_name}").addFilter(_truncation)
logging.getLogger("transformers.tokenization_utils_base").addFilter(_truncation)
