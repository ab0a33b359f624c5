"""How sdlab tells the user something without stopping them.

Two warning classes, so that users (and the test suite) can filter them apart:
``SdlabNotice`` is an expected, visible message (a fallback to the built-in model, a throttled
preview); ``SdlabWarning`` means something is probably wrong and the user should act.
"""
from __future__ import annotations

import logging
import warnings


class SdlabNotice(UserWarning):
    """Something the user should see but need not fix (e.g. 'using the built-in tiny model')."""


class SdlabWarning(UserWarning):
    """Something that is probably wrong; the message says what to do."""


def notice(message: str, *, stacklevel: int = 3) -> None:
    warnings.warn(message, SdlabNotice, stacklevel=stacklevel)


def warn(message: str, *, stacklevel: int = 3) -> None:
    warnings.warn(message, SdlabWarning, stacklevel=stacklevel)


class _TorchvisionFallbackFilter(logging.Filter):
    """transformers announces, on every import of the SD pipelines, that its image processors fall back
    to PIL when torchvision is absent. sdlab needs no torchvision (the PIL path is the one SD always
    used), so that red block in every notebook says nothing a user should act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())
