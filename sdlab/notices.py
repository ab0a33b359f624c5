"""How sdlab tells the user something without stopping them.

Two warning classes, so that users (and the test suite) can filter them apart:
``SdlabNotice`` is an expected, visible message (a fallback to the built-in model, a throttled
preview); ``SdlabWarning`` means something is probably wrong and the user should act.
"""
from __future__ import annotations

import warnings


class SdlabNotice(UserWarning):
    """Something the user should see but need not fix (e.g. 'using the built-in tiny model')."""


class SdlabWarning(UserWarning):
    """Something that is probably wrong; the message says what to do."""


def notice(message: str, *, stacklevel: int = 3) -> None:
    warnings.warn(message, SdlabNotice, stacklevel=stacklevel)


def warn(message: str, *, stacklevel: int = 3) -> None:
    warnings.warn(message, SdlabWarning, stacklevel=stacklevel)
