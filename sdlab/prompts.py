"""What a model will make of a prompt, said before the run: words it ignores.

``prompt_problems(lab, prompt, negative_prompt)`` returns sentences for ``run.problems``; generation shows
each as a notice. Two cases:

- Words past the text encoder's window, with ``prompt_syntax="plain"``. CLIP reads 77 tokens (75 plus start
  and end); diffusers' ``encode_prompt`` cuts the rest and only logs it
  (pipelines/stable_diffusion/pipeline_stable_diffusion.py). sdlab names the dropped words. By default
  ("auto") a long prompt is encoded in chunks of 75 tokens, as A1111 does (sdlab.prompt_encoding), and
  nothing is dropped.
- For the toy model: words outside its vocabulary, which its text encoder ignores.
"""
from __future__ import annotations


def truncated(tokenizer, text: str) -> tuple[int, str] | None:
    """(the prompt's length in tokens, the text of the tokens the encoder will not see), or None when it
    fits. Counted with the model's own tokenizer, start and end tokens included."""
    limit = getattr(tokenizer, "model_max_length", None)
    if not text or not limit or limit > 100_000:  # no limit (transformers' VERY_LARGE_INTEGER)
        return None
    ids = tokenizer(text, truncation=False, verbose=False).input_ids
    if len(ids) <= limit:
        return None
    dropped = tokenizer.decode(ids[limit - 1:-1], skip_special_tokens=True).strip()
    return len(ids), dropped if len(dropped) <= 200 else f"{dropped[:90]} ... {dropped[-90:]}"


def prompt_problems(lab, prompt: str, negative_prompt: str = "", plan=None) -> list[str]:
    """``plan``: the prompts' plan when sdlab encodes them A1111's way (``prompt_encoding.plan_prompts``): then
    nothing is cut (long prompts take more chunks), and the words are those of its texts, without the syntax."""
    problems: list[str] = []
    tokenizer = getattr(getattr(lab, "pipe", None), "tokenizer", None)
    if plan is not None and plan.syntax != "plain":
        from .prompt_syntax import prompt_weights

        def words(schedule):
            return " ".join(t for _, text in schedule for t, w in prompt_weights(text) if not (t == "BREAK" and w == -1))

        prompt, negative_prompt = words(plan.prompt), words(plan.negative)
        tokenizer = None
    if tokenizer is not None:
        for field, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            cut = truncated(tokenizer, text)
            if cut is not None:
                length, dropped = cut
                problems.append(
                    f"The {field} is {length} tokens and the text encoder reads {tokenizer.model_max_length}: "
                    f"these words are dropped: {dropped!r}. Shorten it, put what matters first, or "
                    f"leave prompt_syntax at 'auto' to encode it in chunks of 75 tokens as A1111 does.")
    from .toy import is_teaching_model

    if is_teaching_model(lab):
        from .toy.data import unknown_words

        for field, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            words = unknown_words(text)
            if words:
                which = f"the word {words[0]!r}" if len(words) == 1 else f"the words {', '.join(map(repr, words))}"
                problems.append(f"The teaching model does not know {which} in the {field}, so it draws as if "
                                f"{'it were' if len(words) == 1 else 'they were'} not there "
                                "(sdlab.toy.vocabulary() lists the words it knows).")
    return problems
