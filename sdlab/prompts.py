"""What a model will make of a prompt, said before the run: words it ignores.

``prompt_problems(lab, settings)`` returns sentences for ``run.problems``; generation shows each as a
notice. For the toy model: words outside its vocabulary, which its text encoder ignores.
"""
from __future__ import annotations


def prompt_problems(lab, prompt: str, negative_prompt: str = "") -> list[str]:
    problems: list[str] = []
    if getattr(lab, "kind", None) == "toy":
        from .toy.data import unknown_words, vocabulary

        for field, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            words = unknown_words(text)
            if words:
                problems.append(f"The toy model does not know {', '.join(map(repr, words))} (in the {field}); "
                                f"it ignores them. Words it knows: {', '.join(vocabulary())}.")
    return problems
