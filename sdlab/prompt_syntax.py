"""AUTOMATIC1111's prompt syntax, read the way A1111 reads it: prompt editing and alternation
(:func:`prompt_schedule`), then emphasis and BREAK (:func:`prompt_weights`).

A1111 reads a prompt in two passes, and so does this module:

1. :func:`prompt_schedule` resolves prompt editing (``[from:to:when]``, ``[to:when]``, ``[from::when]``) and
   alternation (``[a|b]``) into the texts in effect over the sampling steps: ``[(end_step, text), ...]``.
   Emphasis is left in each text as written.
2. :func:`prompt_weights` reads one such text's emphasis (``(a)``, ``(a:1.3)``, ``[a]``, escapes ``\\(``)
   and ``BREAK`` into ``[(text, weight), ...]``, the pieces A1111 encodes with CLIP and scales.

:func:`prompt_at` is A1111's lookup of the text in effect during sampling, with A1111's off-by-one kept:
the denoiser's call counter starts at 0 and the entry used is the first whose end step is >= the counter,
so the first entry serves one call more than its end step says (calls 0..5 for an end step of 5), and an
alternation ``[a|b]`` gives ``a`` to the first two calls (0 and 1), then ``b``, ``a``, ... . That is what
A1111 does (modules/prompt_parser.py, ``reconstruct_cond_batch``), so an sdlab run matches an A1111 run.

:func:`uses_syntax` says whether A1111 would read a text differently from plain text (so that sdlab must
encode it itself), and :func:`describe_weights` writes weighted pieces back the way A1111 users write them.

Sources (behaviour only; A1111's code is AGPL and none of it is copied here):

- the A1111 wiki, "Features" page, sections "Attention/emphasis", "Prompt editing", "Alternating Words"
  and "BREAK": https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/Features
- the doctests of A1111's modules/prompt_parser.py (``get_learned_conditioning_prompt_schedules`` and
  ``parse_prompt_attention``), which tests/test_prompt_syntax.py repeats as a table.

The editing grammar is A1111's Lark grammar, parsed here by a small recursive-descent parser of our own.
Pure Python: imports the standard library and sdlab's checks only.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Iterable, NamedTuple, Union

from . import checks
from .errors import InvalidArgument, WrongType

__all__ = ["prompt_schedule", "prompt_at", "prompt_weights", "uses_syntax", "describe_weights"]

# ---------------------------------------------------------------------------------------------------
# Prompt editing and alternation: the grammar
# ---------------------------------------------------------------------------------------------------
# A1111's grammar (modules/prompt_parser.py, written in Lark's notation):
#
#   start:      (prompt | /[][():]/+)*
#   prompt:     (emphasized | scheduled | alternate | plain | WHITESPACE)*
#   emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
#   scheduled:  "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
#   alternate:  "[" prompt ("|" [prompt])+ "]"
#   plain:      /([^\\\[\]():|]|\\.)+/          WHITESPACE: /\s+/       NUMBER: Lark's SIGNED_NUMBER
#
# Inside a prompt every bracket begins or ends a construct, so where a construct that starts at a given
# position ends, and what it is, does not depend on what surrounds it: the parser below remembers each
# position's answer (linear time) and works out the positions from the right, so that no construct nests
# deeper in Python's stack than one level, however deep the brackets go. Only at the top level may a
# bracket or colon be a literal character; there A1111's parser takes a bracket that begins a valid
# construct as that construct (as its doctests show: "a [b:3]" is an edit, not text).

# plain text: anything but \ [ ] ( ) : |, or a backslash and the character after it (kept as both: the
# escape is prompt_weights' to resolve). As in A1111's regular expression, "." is not a newline, so a
# backslash before a line break is not an escape and the text does not parse.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
# Lark's common.SIGNED_NUMBER: [+-] then an integer, a decimal (1. / .5 / 0.25) or either with an exponent
_SIGNED_NUMBER = r"[+-]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)"
# the end of a scheduled construct: optional whitespace, NUMBER, optional whitespace, "]"
_WHEN = re.compile(r"\s*(" + _SIGNED_NUMBER + r")\s*\]")


class _Scheduled(NamedTuple):
    """``[before:after:number]``: ``before`` (None when not written) up to step ``number``'s end step."""

    before: "list | None"
    after: list
    number: str


class _Alternate(NamedTuple):
    """``[a|b|...]``: one option per step, in turn."""

    options: list


# A parsed text is a list of items: literal text (str), a nested list (the inside of an emphasis, brackets
# kept as text around it), a _Scheduled or an _Alternate.
_Item = Union[str, list, _Scheduled, _Alternate]


class _Parser:
    """A1111's editing grammar over one text; :meth:`parse` gives the items, or None if it does not parse."""

    def __init__(self, text: str):
        self.text = text
        self.known: dict[int, tuple[_Item, int] | None] = {}  # position -> (construct, end) or None

    def parse(self) -> list | None:
        """``start``: prompts and literal ``[ ] ( ) :``; None where a character fits nowhere (a ``|``
        outside brackets, a lone backslash at the end or before a line break)."""
        text = self.text
        for i in range(len(text) - 1, -1, -1):  # innermost constructs first: no deep recursion later
            if text[i] in "[(":
                self.construct(i)
        items: list = []
        i = 0
        while i < len(text):
            more, i = self.prompt(i)
            items.extend(more)
            if i < len(text):
                if text[i] not in "[]():":
                    return None
                items.append(text[i])
                i += 1
        return items

    def prompt(self, i: int) -> tuple[list, int]:
        """``prompt`` from position i: the items, and where it stops (at a character it cannot take)."""
        items: list = []
        while i < len(self.text):
            plain = _PLAIN.match(self.text, i)
            if plain:
                items.append(plain.group())
                i = plain.end()
                continue
            got = self.construct(i) if self.text[i] in "[(" else None
            if got is None:
                break
            item, i = got
            items.append(item)
        return items, i

    def construct(self, i: int) -> tuple[_Item, int] | None:
        """The construct starting at the bracket at i (emphasized, scheduled or alternate) and its end, or
        None if none starts there."""
        if i not in self.known:
            self.known[i] = self._round(i) if self.text[i] == "(" else self._square(i)
        return self.known[i]

    def _round(self, i: int) -> tuple[_Item, int] | None:
        """``( prompt )`` or ``( prompt : prompt )``: text as written."""
        text = self.text
        first, j = self.prompt(i + 1)
        if j < len(text) and text[j] == ")":
            return ["(", first, ")"], j + 1
        if j < len(text) and text[j] == ":":
            second, k = self.prompt(j + 1)
            if k < len(text) and text[k] == ")":
                return ["(", first, ":", second, ")"], k + 1
        return None

    def _square(self, i: int) -> tuple[_Item, int] | None:
        """``[ prompt ]`` (text as written), ``[ prompt | prompt ... ]`` or ``[ [prompt :] prompt : NUMBER ]``."""
        text = self.text
        first, j = self.prompt(i + 1)
        if j >= len(text):
            return None
        if text[j] == "]":
            return ["[", first, "]"], j + 1
        if text[j] == "|":
            options = [first]
            while j < len(text) and text[j] == "|":
                option, j = self.prompt(j + 1)
                options.append(option)
            if j < len(text) and text[j] == "]":
                return _Alternate(options), j + 1
            return None
        if text[j] == ":":
            when = _WHEN.match(text, j + 1)
            if when:
                return _Scheduled(None, first, when.group(1)), when.end()
            second, k = self.prompt(j + 1)
            when = _WHEN.match(text, k + 1) if k < len(text) and text[k] == ":" else None
            if when:
                return _Scheduled(first, second, when.group(1)), when.end()
        return None


def _parse(text: str) -> list | None:
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------------------------
# Prompt editing and alternation: steps and texts
# ---------------------------------------------------------------------------------------------------

def _when(number: str, steps: int) -> int:
    """A scheduled construct's end step, as A1111 computes it: a NUMBER written with a "." is a fraction of
    the steps (``0.5`` of 20 is 10; ``1.0`` is the last step), one without is a step number (``3``);
    truncated to a whole number and at most ``steps``. (A1111 fails on a number beyond float's range,
    ``1e400``; here it is infinite, so at most ``steps``, or below every step when negative.)"""
    value = float(number)
    if "." in number:
        value *= steps
    if value >= steps:
        return steps
    return int(value) if math.isfinite(value) else -1


def _walk(items: list):
    """Every item of a parsed text, nested ones included (depth-first, with a stack: no recursion)."""
    stack = [items]
    while stack:
        for item in stack.pop():
            yield item
            if isinstance(item, list):
                stack.append(item)
            elif isinstance(item, _Scheduled):
                stack.extend(part for part in (item.before, item.after) if part is not None)
            elif isinstance(item, _Alternate):
                stack.extend(item.options)


def _end_steps(items: list, steps: int) -> list[int]:
    """A1111's end steps: ``steps``, the end step (>= 1) of every scheduled construct, in effect or not,
    and every step from 1 when there is any alternation."""
    ends = {steps}
    for item in _walk(items):
        if isinstance(item, _Scheduled):
            when = _when(item.number, steps)
            if when >= 1:
                ends.add(when)
        elif isinstance(item, _Alternate):
            ends.update(range(1, steps + 1))
    return sorted(ends)


def _text_at(items: list, step: int, steps: int) -> str:
    """The text in effect at end step ``step``: a scheduled construct's first part up to its end step, its
    second after; an alternation's option (step - 1) mod its count; everything else as written."""
    out: list[str] = []
    stack = [iter(items)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                out.append(item)
                continue
            if isinstance(item, _Scheduled):
                chosen = item.before if step <= _when(item.number, steps) else item.after
            elif isinstance(item, _Alternate):
                chosen = item.options[(step - 1) % len(item.options)]
            else:
                chosen = item
            stack.append(iter(chosen or ()))
            break
        else:
            stack.pop()
    return "".join(out)


def _check_text(text) -> str:
    return checks.text("text", text, hint=" Give the prompt as a string, such as 'a cat, (sunset:1.2)'.")


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """A1111's prompt editing and alternation over ``steps`` sampling steps: ``[(end_step, text), ...]``,
    end steps increasing, the last one ``steps``; each text is the prompt in effect up to its end step,
    with emphasis still written in it (for :func:`prompt_weights`).

    - ``[from:to:when]`` is ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` adds ``to``
      after ``when``, ``[from::when]`` removes ``from`` after it. ``when`` written with a "." is a fraction
      of the steps (``[a:b:0.25]`` of 100 steps: ``a`` up to step 25), without one a step number. Edits
      nest (``a[b:[c:d:2]:1]e``).
    - ``[a|b|c]`` is ``a`` at step 1, ``b`` at 2, ``c`` at 3, ``a`` at 4, ...; options may be empty
      (``[fe|]male``).
    - A bracket or colon that begins or ends no construct is text, as is emphasis (``(a:1.2)``, ``[a]``).
      A text that cannot be read at all (a ``|`` outside brackets, a lone backslash at the end) is one
      entry, unchanged: ``[(steps, text)]``.

    Source: A1111 wiki "Features", sections "Prompt editing" and "Alternating Words"; A1111's
    modules/prompt_parser.py, ``get_learned_conditioning_prompt_schedules`` and its doctests (the
    ``[mountain:lake:0.25]`` example of 100 steps is theirs).
    """
    text = _check_text(text)
    steps = checks.whole("steps", steps, low=1, high=checks.MAX_STEPS)
    items = _parse(text)
    if items is None:
        return [(steps, text)]
    return [(end, _text_at(items, end, steps)) for end in _end_steps(items, steps)]


def prompt_at(schedule: Iterable[tuple[int, str]], call_index: int) -> str:
    """The text A1111 uses for the denoiser's call number ``call_index`` (counted from 0): that of the
    first entry whose end step is >= ``call_index``, or the first entry if none is.

    The counter starts at 0 while end steps count from 1, so the first entry serves one call more than
    its end step says: for ``[(5, 'a'), (10, 'b')]`` calls 0..5 use ``'a'`` and 6..9 ``'b'``, and an
    alternation's first option serves the first two calls. This is A1111's behaviour, kept on purpose
    (modules/prompt_parser.py, ``reconstruct_cond_batch``), so that a run matches A1111's.
    """
    entries = list(schedule)
    if not entries:
        raise InvalidArgument("schedule is empty: give prompt_schedule(text, steps)'s list.",
                                     argument="schedule")
    call_index = checks.whole("call_index", call_index, low=0)
    for end, text in entries:
        if end >= call_index:
            return text
    return entries[0][1]


# ---------------------------------------------------------------------------------------------------
# Emphasis and BREAK
# ---------------------------------------------------------------------------------------------------

# The tokens of A1111's emphasis, in the order they are tried: an escaped bracket or backslash, a lone
# backslash, an opening bracket, a weight close ":1.2)", a closing bracket, text, a lone colon.
_ATTENTION = re.compile(r"""
    \\[()\[\]\\]                      # escaped ( ) [ ] or \
  | \\                                # a lone backslash
  | [(\[]                             # an opening bracket
  | :\s*([+-]?[.\d]+)\s*\)            # a weight close
  | [)\]]                             # a closing bracket
  | [^\\()\[\]:]+                     # text
  | :                                 # a lone colon
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# How sdlab may read a prompt (Settings.prompt_syntax) and the emphasis modes (Settings.emphasis): A1111's
# "Emphasis mode" setting (modules/sd_emphasis.py: Original, No norm, Ignore, None) and ComfyUI's weighting
SYNTAX = ("auto", "a1111", "plain")
EMPHASIS = ("original", "no_norm", "ignore", "none", "comfyui")
A1111_EMPHASIS = {"Original": "original", "No norm": "no_norm", "Ignore": "ignore", "None": "none",
                  "ComfyUI": "comfyui"}  # A1111's names (infotext "Emphasis: No norm") -> sdlab's
EMPHASIS_LABEL = {v: k for k, v in A1111_EMPHASIS.items()}


def emphasis_mode(value) -> str:
    """``emphasis`` checked: sdlab's names, or A1111's ("No norm", "Original", ...)."""
    if isinstance(value, str) and value in A1111_EMPHASIS:
        return A1111_EMPHASIS[value]
    if isinstance(value, str) and value.strip().lower().replace(" ", "_") in EMPHASIS:  # "No Norm", "NO_NORM"
        return value.strip().lower().replace(" ", "_")
    return checks.choice("emphasis", value, EMPHASIS,
                         hint=" 'original' is A1111's default (weights, then the mean restored).")


ROUND = 1.1  # what ( ) multiplies by

SQUARE = 1 / 1.1  # what [ ] multiplies by
BREAK = ("BREAK", -1.0)  # the marker prompt_weights puts where BREAK splits the text


def _weight(number: str) -> float | None:
    """A weight close's number as a float, or None where it is not one (``1.2.3``, ``.``)."""
    try:
        return float(number)
    except ValueError:
        return None


def _merge(pieces: list[list]) -> list[tuple[str, float]]:
    """Adjacent pieces of exactly equal weights as one (their texts joined)."""
    merged: list[list] = []
    for piece in pieces:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(list(piece))
    return [(text, weight) for text, weight in merged]


def prompt_weights(text: str) -> list[tuple[str, float]]:
    """A1111's emphasis: the text as ``[(piece, weight), ...]``, adjacent pieces of equal weights merged.

    ``(a)`` multiplies a's weight by 1.1, ``[a]`` by 1/1.1, ``(a:1.5)`` by 1.5; they nest by multiplying
    (``((a))`` is 1.1 * 1.1 = 1.2100000000000002, computed in that order as A1111 does). A bracket left
    open applies to the end of the text; a closing bracket with none open is text. ``\\(``, ``\\)``,
    ``\\[``, ``\\]`` and ``\\\\`` are the character escaped; a lone backslash is dropped, as in A1111
    (``a\\b`` is ``ab``). ``BREAK`` (upper case, a word of its own) with the spaces around it becomes the
    marker ``("BREAK", -1.0)``; inside brackets the marker's weight is multiplied too, as in A1111, where
    it then no longer counts as a BREAK. An empty result is ``[("", 1.0)]``.

    A1111 fails with a ValueError on a weight that is not a number (``(a:1.2.3)``, ``(a:.)``); here that
    weight close is text, and its bracket stays open.

    Source: A1111 wiki "Features", sections "Attention/emphasis" and "BREAK"; A1111's
    modules/prompt_parser.py, ``parse_prompt_attention`` and its doctests.
    """
    text = _check_text(text)
    pieces: list[list] = []
    opened = {"(": [], "[": []}  # where each open bracket's pieces start

    def multiply(start: int, by: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= by

    for token in _ATTENTION.finditer(text):
        chars, number = token.group(0), token.group(1)
        weight = _weight(number) if number is not None else None
        if chars.startswith("\\"):
            pieces.append([chars[1:], 1.0])
        elif chars in opened:
            opened[chars].append(len(pieces))
        elif weight is not None and opened["("]:
            multiply(opened["("].pop(), weight)
        elif chars == ")" and opened["("]:
            multiply(opened["("].pop(), ROUND)
        elif chars == "]" and opened["["]:
            multiply(opened["["].pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(chars)):
                if i:
                    pieces.append(list(BREAK))
                pieces.append([part, 1.0])
    for start in opened["("]:
        multiply(start, ROUND)
    for start in opened["["]:
        multiply(start, SQUARE)
    return _merge(pieces or [["", 1.0]])


# ---------------------------------------------------------------------------------------------------
# Whether a text uses the syntax, and weights written back
# ---------------------------------------------------------------------------------------------------

def _edits(text: str) -> bool:
    """Whether the text holds a scheduled or alternate construct: exactly when prompt_schedule gives
    more than one entry or changes the text, for any steps (resolving one removes its brackets)."""
    items = _parse(text)
    return items is not None and any(isinstance(item, (_Scheduled, _Alternate)) for item in _walk(items))


def uses_syntax(text: str) -> bool:
    """Whether A1111 reads ``text`` differently from plain text: it edits or alternates
    (:func:`prompt_schedule` gives more than one entry or changes the text), or its emphasis gives a
    weight other than 1, a BREAK, or other text (an escape, ``()``). Plain text, commas and all, is not.
    Where this is True, sdlab encodes the prompt itself, as A1111 would."""
    text = _check_text(text)
    if _edits(text):
        return True
    pieces = prompt_weights(text)
    return any(weight != 1.0 for _, weight in pieces) or "".join(piece for piece, _ in pieces) != text


def _number(weight: float) -> str:
    """A weight rounded to 2 decimals, without trailing zeros (1.21, 1.1, 0.91, 2), in plain notation."""
    if not math.isfinite(weight):
        return repr(weight)
    shown = f"{round(weight, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if shown == "-0" else shown


def describe_weights(pieces: Iterable[tuple[str, float]]) -> str:
    """Weighted pieces (:func:`prompt_weights`'s) written the way A1111 users write them, for display:
    text of weight 1 as it is, other text as ``(text:1.21)`` (the weight rounded to 2 decimals), the
    BREAK marker as `` BREAK ``. Text is not escaped: a piece holding a bracket shows it bare."""
    try:
        pairs = [(piece, weight) for piece, weight in pieces]
    except (TypeError, ValueError):
        raise WrongType(f"pieces must be a list of (text, weight) pairs such as prompt_weights(text) gives, "
                        f"not {type(pieces).__name__} {checks._shown(pieces)}.", argument="pieces") from None
    out = []
    for piece, weight in pairs:
        if not isinstance(piece, str) or checks.is_flag(weight) or not isinstance(weight, numbers.Real):
            raise WrongType(f"pieces must be (text, weight) pairs such as prompt_weights(text) gives; it holds "
                            f"{checks._shown((piece, weight))}.", argument="pieces")
        if (piece, weight) == BREAK:
            out.append(" BREAK ")
        elif weight == 1.0:
            out.append(piece)
        else:
            out.append(f"({piece}:{_number(float(weight))})")
    return "".join(out)
