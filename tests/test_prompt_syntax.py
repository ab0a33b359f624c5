"""A1111's prompt syntax: prompt editing / alternation (prompt_schedule, prompt_at) and emphasis / BREAK
(prompt_weights), against A1111's own examples, plus properties over any text.

Sources of the tables: "doctest" = the doctests of A1111's modules/prompt_parser.py
(get_learned_conditioning_prompt_schedules, parse_prompt_attention); "wiki" = the A1111 wiki's Features
page (https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/Features); "rule" = worked out by hand
from the documented rules (the step rule: a number with "." is a fraction of the steps, else a step).
"""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sdlab import checks
from sdlab.errors import InvalidArgument, SdlabError, WrongType
from sdlab.prompt_syntax import describe_weights, prompt_at, prompt_schedule, prompt_weights, uses_syntax

MODEST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def _alternating(first: str, second: str, steps: int = 10) -> list[tuple[int, str]]:
    return [(t, first if t % 2 else second) for t in range(1, steps + 1)]


FANTASY = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
           "[ in background:0.25] [shoddy:masterful:0.5]")

SCHEDULES = [
    # (text, steps, expected)
    ("test", 10, [(10, "test")]),  # doctest
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),  # doctest
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),  # doctest
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),  # doctest
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),  # doctest
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),  # doctest
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),  # doctest
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),  # doctest
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),  # doctest
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),  # doctest
    ("[a|(b:1.1)]", 10, _alternating("a", "(b:1.1)")),  # doctest
    ("[fe|]male", 10, _alternating("female", "male")),  # doctest; wiki "Alternating Words"
    ("[fe|||]male", 10, [(t, "female" if t % 4 == 1 else "male") for t in range(1, 11)]),  # doctest
    ("[a:b:0]", 10, [(10, "b")]),  # rule: step 0 is before every step
    ("[a:b:1.0]", 10, [(10, "a")]),  # rule: 1.0 of the steps is the last one
    ("[a:b:1]", 10, [(1, "a"), (10, "b")]),  # rule
    ("[a:b:25]", 10, [(10, "a")]),  # rule: past the end, capped at steps
    ("[a:b:-1]", 10, [(10, "b")]),  # rule
    ("[a::3]", 10, [(3, "a"), (10, "")]),  # wiki "Prompt editing": [from::when] removes
    ("[:b:3]", 10, [(3, ""), (10, "b")]),  # wiki "Prompt editing": [to:when] adds
    ("[a:b:1e1]", 10, [(10, "a")]),  # rule: an exponent without "." is a step number (10)
    ("[a:b:2.5E-1]", 20, [(5, "a"), (20, "b")]),  # rule: with "." a fraction: 0.25 of 20
    ("[a:b:+3]", 10, [(3, "a"), (10, "b")]),  # rule: Lark's SIGNED_NUMBER takes a "+"
    ("[a:b:1.]", 4, [(4, "a")]),  # rule: "1." is a decimal
    ("[a:b:c]", 10, [(10, "[a:b:c]")]),  # rule: no number, so no edit: text as written
    ("a | b", 10, [(10, "a | b")]),  # rule: a "|" outside brackets: the text does not parse
    ("a [b:3] \\", 10, [(10, "a [b:3] \\")]),  # rule: a lone backslash at the end does not parse
    ("\\[b:3]", 10, [(10, "\\[b:3]")]),  # rule: an escaped bracket is plain text, kept with its backslash
    (FANTASY, 100, [  # doctest and wiki "Prompt editing" (100 steps)
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful")]),
]


@pytest.mark.parametrize("text, steps, expected", SCHEDULES)
def test_prompt_schedule_as_a1111(text, steps, expected):
    assert prompt_schedule(text, steps) == expected


WEIGHTS = [
    ("normal text", [("normal text", 1.0)]),  # doctest
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),  # doctest
    ("(unbalanced", [("unbalanced", 1.1)]),  # doctest
    ("\\(literal\\]", [("(literal]", 1.0)]),  # doctest
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),  # doctest
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",  # doctest
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("(a:.5)", [("a", 0.5)]),  # wiki "Attention/emphasis": (word:weight)
    ("((fox))", [("fox", 1.2100000000000002)]),  # wiki: each () multiplies by 1.1
    ("[x]", [("x", 0.9090909090909091)]),  # wiki: [] divides by 1.1
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),  # doctest; wiki "BREAK"
    ("a break b", [("a break b", 1.0)]),  # wiki "BREAK": upper case only
    ("aBREAK b", [("aBREAK b", 1.0)]),  # rule: BREAK must be a word of its own
    ("(a:1.2", [("a:1.2", 1.1)]),  # rule: no ")": ":1.2" is text, the open "(" applies to the end
    ("a) b]", [("a) b]", 1.0)]),  # rule: a closing bracket with none open is text
    ("a:b", [("a:b", 1.0)]),  # rule: a lone colon is text
    ("(a:1.5)(b:1.5)", [("ab", 1.5)]),  # rule: equal weights merge
    ("(a: 2 )", [("a", 2.0)]),  # rule: spaces around the weight
    ("(a:-1)", [("a", -1.0)]),  # rule: a signed weight
    ("[(a)]", [("a", 1.1 * (1 / 1.1))]),  # rule: multipliers in order
    ("a\\\\b", [("a\\b", 1.0)]),  # rule: an escaped backslash is one backslash
    ("a\\b", [("ab", 1.0)]),  # rule: a lone backslash is dropped (A1111 keeps what follows it only)
    ("()", [("", 1.0)]),  # rule: nothing left
    ("", [("", 1.0)]),  # rule: an empty text
    ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # sdlab: A1111 raises ValueError on this weight; here it is text
]


@pytest.mark.parametrize("text, expected", WEIGHTS)
def test_prompt_weights_as_a1111(text, expected):
    assert prompt_weights(text) == expected


def test_prompt_at_uses_the_first_entry_whose_end_step_reaches_the_call():
    schedule = [(5, "a"), (10, "b")]
    assert [prompt_at(schedule, i) for i in range(10)] == ["a"] * 6 + ["b"] * 4
    assert prompt_at(schedule, 11) == "a"  # past every end step: the first entry
    alternation = prompt_schedule("[x|y]", 4)
    # A1111's off-by-one, kept: the counter starts at 0, so the first two calls both get the first option
    assert [prompt_at(alternation, i) for i in range(4)] == ["x", "x", "y", "x"]


@pytest.mark.parametrize("text, expected", [
    ("a cat, sitting, on a mat", False), ("", False), ("a:b", False), ("a) b", False), ("a break b", False),
    ("(a)", True), ("[a]", True), ("(a:1)", True), ("a BREAK b", True), ("\\(a\\)", True), ("()", True),
    ("[a:b:3]", True), ("[a|b]", True), ("[a:a:3]", True), ("a\\b", True),
])
def test_uses_syntax(text, expected):
    assert uses_syntax(text) is expected


@pytest.mark.parametrize("pieces, expected", [
    ([("a", 1.0)], "a"),
    ([("an ", 1.0), ("important", 1.1), (" word", 1.0)], "an (important:1.1) word"),
    ([("fox", 1.2100000000000002)], "(fox:1.21)"),
    ([("x", 1 / 1.1)], "(x:0.91)"),
    ([("a", 2.0)], "(a:2)"),
    ([("a", 1.0), ("BREAK", -1.0), ("b", 1.0)], "a BREAK b"),
])
def test_describe_weights(pieces, expected):
    assert describe_weights(pieces) == expected


def test_describe_weights_reads_back_as_the_weights_rounded():
    pieces = prompt_weights("a (((house:1.3)) [on] a (hill:0.5), sun")
    again = prompt_weights(describe_weights(pieces))
    assert [t for t, _ in again] == [t for t, _ in pieces]
    assert [w for _, w in again] == pytest.approx([w for _, w in pieces], abs=0.005)


# --- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: prompt_schedule(None, 10), lambda: prompt_schedule(b"a", 10), lambda: prompt_weights(3),
    lambda: uses_syntax(["a"]),
])
def test_text_must_be_a_string(call):
    with pytest.raises(WrongType, match="text must be a string") as err:
        call()
    assert err.value.argument == "text"


@pytest.mark.parametrize("steps, kind", [(0, InvalidArgument), (-3, InvalidArgument), (2.5, InvalidArgument),
                                         (checks.MAX_STEPS + 1, InvalidArgument), ("10", WrongType),
                                         (True, WrongType), (None, WrongType)])
def test_steps_are_checked(steps, kind):
    with pytest.raises(kind) as err:
        prompt_schedule("a [b:3]", steps)
    assert err.value.argument == "steps"


def test_steps_as_a_whole_float_is_accepted():
    assert prompt_schedule("a [b:3]", 10.0) == [(3, "a "), (10, "a b")]


def test_prompt_at_and_describe_weights_name_their_arguments():
    with pytest.raises(InvalidArgument) as err:
        prompt_at([], 0)
    assert err.value.argument == "schedule"
    with pytest.raises(InvalidArgument) as err:
        prompt_at([(1, "a")], -1)
    assert err.value.argument == "call_index"
    for bad in (3, [("a",)], [(1.0, "a")]):
        with pytest.raises(WrongType) as err:
            describe_weights(bad)
        assert err.value.argument == "pieces"


def test_deep_brackets_do_not_exhaust_the_stack():
    deep = "[" * 5000 + "a:3" + "]" * 5000
    assert prompt_schedule(deep, 10)[-1][0] == 10
    nested = "(" * 5000 + "[a|b]" + ")" * 5000
    assert prompt_schedule(nested, 2) == [(1, "(" * 5000 + "a" + ")" * 5000), (2, "(" * 5000 + "b" + ")" * 5000)]


# --- properties -----------------------------------------------------------------------------------------

SYNTAX = "()[]:|\\ abc1.5"
syntax_text = st.lists(st.sampled_from(list(SYNTAX) + ["BREAK", "0.5", " 3", "\n"]), max_size=30).map("".join)
any_text = st.one_of(st.text(max_size=60), syntax_text)
plain_text = st.text(max_size=60).filter(lambda s: not set(s) & set("\\()[]:|") and not re.search(r"\bBREAK\b", s))


@MODEST
@given(text=plain_text)
def test_plain_text_is_read_as_itself(text):
    assert prompt_schedule(text, 20) == [(20, text)]
    assert prompt_weights(text) == [(text, 1.0)]
    assert uses_syntax(text) is False
    assert describe_weights(prompt_weights(text)) == text


@MODEST
@given(text=any_text, steps=st.integers(1, 40))
def test_any_text_gives_an_answer_never_an_error(text, steps):
    schedule = prompt_schedule(text, steps)
    ends = [end for end, _ in schedule]
    assert ends[-1] == steps and all(a < b for a, b in zip(ends, ends[1:])) and ends[0] >= 1
    assert all(isinstance(t, str) for _, t in schedule)
    pieces = prompt_weights(text)
    assert pieces and all(isinstance(t, str) and isinstance(w, float) for t, w in pieces)
    assert all(a[1] != b[1] or a[1] != a[1] for a, b in zip(pieces, pieces[1:]))  # merged (nan aside)
    assert isinstance(uses_syntax(text), bool)
    assert isinstance(describe_weights(pieces), str)


@MODEST
@given(text=any_text, steps=st.integers(1, 12))
def test_uses_syntax_is_its_definition(text, steps):
    schedule = prompt_schedule(text, steps)
    pieces = prompt_weights(text)
    differs = (len(schedule) > 1 or schedule[0][1] != text or any(w != 1.0 for _, w in pieces)
               or "".join(t for t, _ in pieces) != text)
    assert uses_syntax(text) is differs


words = st.text(alphabet="abc xyz,", min_size=1, max_size=8).filter(lambda s: not re.search(r"\bBREAK\b", s))


@st.composite
def balanced(draw, depth=0):
    """Text with balanced (), (:w) and [] around words: the words joined are the text without the syntax."""
    parts, plain = [], []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["word", "round", "square", "weight"] if depth < 3 else ["word"]))
        if kind == "word":
            w = draw(words)
            parts.append(w)
            plain.append(w)
            continue
        inner, inner_plain = draw(balanced(depth + 1))
        plain.append(inner_plain)
        if kind == "round":
            parts.append(f"({inner})")
        elif kind == "square":
            parts.append(f"[{inner}]")
        else:
            parts.append(f"({inner}:{draw(st.sampled_from(['0.5', '1.3', '2', '.8']))})")
    return "".join(parts), "".join(plain)


@MODEST
@given(case=balanced())
def test_weights_keep_the_words_of_balanced_emphasis(case):
    text, plain = case
    assert "".join(t for t, _ in prompt_weights(text)) == plain
    assert prompt_schedule(text, 10) == [(10, text)]  # emphasis passes through editing unchanged


@MODEST
@given(ends=st.lists(st.integers(1, 50), min_size=1, max_size=6, unique=True), call=st.integers(0, 60))
def test_prompt_at_picks_the_first_entry_reaching_the_call(ends, call):
    schedule = [(end, f"p{end}") for end in sorted(ends)]
    reaching = [text for end, text in schedule if end >= call]
    assert prompt_at(schedule, call) == (reaching[0] if reaching else schedule[0][1])


@MODEST
@given(text=any_text)
def test_errors_are_only_sdlab_errors_for_bad_steps(text):
    for steps in (0, checks.MAX_STEPS + 1):
        with pytest.raises(SdlabError):
            prompt_schedule(text, steps)
