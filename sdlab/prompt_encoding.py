"""A1111's prompt conditioning, driven through the model's own tokenizers and text encoders.

What AUTOMATIC1111's web UI computes from a prompt (its wiki, "Features": "Attention/emphasis", "Infinite
prompt length", "BREAK", "Prompt editing", "Alternating words"; the behaviour of its modules/sd_hijack_clip.py,
sd_emphasis.py and prompt_parser.py, written here from that behaviour, not from its AGPL code):

1. Prompt editing and alternation give a schedule of texts (``sdlab.prompt_syntax.prompt_schedule``),
   computed over A1111's step count: the steps, twice the steps for samplers that call the model twice a
   step (A1111's ``SamplerData.total_steps``). During sampling the model's call k (0-based) is conditioned
   on the first entry whose end step is >= k (``prompt_at``).
2. Each text is split into pieces with weights (``prompt_weights``: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:w)``,
   ``BREAK``). Each piece is tokenized on its own, without start and end tokens.
3. The tokens are cut into chunks of 75 (``chunks``). When a chunk is full and the last comma is at most 20
   tokens back (A1111's option ``comma_padding_backtrack``, default 20), the tokens after that comma move to
   the next chunk. ``BREAK`` closes the chunk. Each chunk is framed as the tokenizer frames a 77-token text:
   start token, the tokens, end token, then the tokenizer's padding token (CLIP's end token in SD 1.x, id 0
   in OpenCLIP's SD 2.x / SDXL tokenizers, as A1111's ``id_pad``).
4. Each chunk is encoded alone by the text encoder, and the chunks are concatenated along the sequence:
   two chunks give a 1 x 154 x 768 conditioning for SD 1.x.
   - SD 1.x: the last layer, or with Clip skip N > 1 the N-th layer from the end with the final layer norm
     applied (A1111 "Clip skip: 2" is the penultimate layer; diffusers' own ``clip_skip`` counts differently
     and fails with transformers 5, so it is not used).
   - SD 2.x: the encoder's last layer (diffusers' SD 2 text encoders already end at OpenCLIP's penultimate
     layer, which A1111 uses); A1111 ignores Clip skip there, and so does sdlab (saying so).
   - SDXL: both encoders' penultimate layers without the final norm, concatenated along the features, as
     diffusers' SDXL pipeline and A1111 use them; the pooled embedding comes from the first chunk of the
     second encoder. A1111 ignores Clip skip for SDXL unless its option "sdxl_clip_l_skip" is on; so does sdlab.
5. Emphasis (``emphasis=``, A1111's setting "Emphasis mode"):
   - "original" (A1111's default): every token's embedding times its weight, then the whole chunk batch
     rescaled so that its mean is the unweighted mean. The batch is every text of one schedule, chunk by
     chunk, as A1111 encodes a prompt's schedule in one batch;
   - "no_norm": multiplied only; "ignore": weights parsed and dropped; "none": the brackets are plain text;
   - "comfyui": ComfyUI's way, ``empty + (z - empty) * w`` per weighted token, with ``empty`` the empty
     prompt's encoding (comfy/sd1_clip.py ``encode_token_weights``); not an A1111 mode.
6. The prompt's and the negative prompt's conditionings are padded to the same number of chunks with the
   empty prompt's encoding, as A1111 does with its option "Pad prompt/negative prompt to be same length"
   (infotext ``Pad conds: True``). Without that option A1111 runs a longer prompt and a shorter negative
   prompt through the UNet separately, unpadded; diffusers' pipeline takes one tensor for both, so sdlab
   always pads (``differences`` in sdlab.a1111 says so for such an infotext).
   SDXL with an empty negative prompt: zeros, as both diffusers (``force_zeros_for_empty_prompt``) and A1111
   (``force_zero_negative_prompt``) use.

A prompt without syntax that fits in 77 tokens never comes here: generation hands the text to the pipeline,
so the run stays bit-identical to a plain ``pipe(...)`` call. When all weights are 1, "original" leaves the
encoder's output unchanged bit for bit, so ``[a:b:1.0]`` runs exactly as ``a`` does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from . import checks
from .prompt_syntax import (A1111_EMPHASIS, EMPHASIS, EMPHASIS_LABEL, SYNTAX, emphasis_mode, prompt_at,  # noqa: F401
                            prompt_schedule, prompt_weights, uses_syntax)

CHUNK = 75  # tokens per chunk, without the start and end tokens
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default
# A1111's extra-network tags (<lora:name:0.8>, <hypernet:...>): taken out of the prompt before it is encoded
# (modules/extra_networks.py); and AND, its composable-diffusion separator (modules/prompt_parser.py)
_RE_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_RE_AND = re.compile(r"\bAND\b")


@dataclass(frozen=True)
class Chunk:
    """One encoder window: 77 token ids (start, 75 tokens or padding, end) and each token's weight."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    length: int  # how many of the 75 are the prompt's own tokens


def _comma_id(tokenizer) -> int | None:
    vocab = tokenizer.get_vocab()
    for token in (",</w>", ","):  # CLIP's BPE marks a word's end; a word-level vocabulary has the comma itself
        if token in vocab and token != tokenizer.unk_token:
            return vocab[token]
    return None


def _tokens(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, truncation=False, add_special_tokens=False, verbose=False).input_ids)


def chunks(tokenizer, pieces: Sequence[tuple[str, float]], *, backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """A prompt's weighted pieces (``prompt_weights``) as A1111 cuts them into 75-token chunks."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = _comma_id(tokenizer)
    out: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close():
        nonlocal ids, weights, last_comma
        n = len(ids)
        out.append(Chunk(ids=tuple([bos, *ids, eos] + [pad] * (CHUNK - n)),
                         weights=tuple([1.0, *weights, 1.0] + [1.0] * (CHUNK - n)), length=n))
        ids, weights, last_comma = [], [], -1

    for text, weight in pieces:
        if text == "BREAK" and weight == -1:
            close()
            continue
        for token in _tokens(tokenizer, text):
            if comma is not None and token == comma:
                last_comma = len(ids)
            elif backtrack and len(ids) == CHUNK and last_comma != -1 and len(ids) - last_comma <= backtrack:
                cut = last_comma + 1  # the phrase after the last comma moves on to the next chunk
                moved, moved_weights = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = moved, moved_weights
            if len(ids) == CHUNK:
                close()
            ids.append(token)
            weights.append(float(weight))
    if ids or not out:
        close()
    return out


def token_count(tokenizer, text: str, emphasis: str = "original") -> tuple[int, int]:
    """(the prompt's tokens, the chunks they take) as A1111 counts them (its "75/150" counter)."""
    got = chunks(tokenizer, _pieces(text, emphasis))
    return sum(c.length for c in got), len(got)


def _pieces(text: str, emphasis: str) -> list[tuple[str, float]]:
    if emphasis == "none":  # A1111's "None": brackets, weights and BREAK are plain text
        return [(text, 1.0)]
    pieces = prompt_weights(text)
    if emphasis == "ignore":
        return [(t, -1.0 if (t == "BREAK" and w == -1) else 1.0) for t, w in pieces]
    return pieces


# --- the text encoders ------------------------------------------------------------------------------
@dataclass
class _Encoder:
    """One tokenizer + text encoder, and which of its outputs A1111 conditions on."""

    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    layer: str  # "last": the output (toy, SD 1.x, SD 2.x); "penultimate": hidden_states[-2] (SDXL)
    clip_skip: int = 1
    pooled: bool = False  # this encoder gives SDXL's pooled embedding

    def __call__(self, ids: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1, 77, D) and the pooled (1, P) or None, for one chunk: called as diffusers' encode_prompt calls it
        (batch 1, no attention mask), so that an unweighted chunk is the pipeline's own embedding bit for bit."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        if self.layer == "penultimate":
            out = self.model(x, output_hidden_states=True)
            return out.hidden_states[-2], (out[0] if self.pooled else None)
        if self.clip_skip > 1:
            out = self.model(x, output_hidden_states=True)
            # (transformers 5 keeps the final norm on CLIPTextModel itself; earlier versions on .text_model)
            norm = getattr(getattr(self.model, "text_model", self.model), "final_layer_norm")
            return norm(out.hidden_states[-self.clip_skip]), None
        return self.model(x)[0], None


def encoders(lab, clip_skip: int = 1) -> list[_Encoder]:
    """The model's encoders, in the order their features are concatenated."""
    pipe, dev = lab.pipe, lab.device
    if lab.family == "sdxl":
        return [_Encoder(pipe.tokenizer, pipe.text_encoder, dev, "penultimate"),
                _Encoder(pipe.tokenizer_2, pipe.text_encoder_2, dev, "penultimate", pooled=True)]
    return [_Encoder(pipe.tokenizer, pipe.text_encoder, dev, "last", clip_skip=clip_skip if lab.family == "sd1" else 1)]


def clip_skip_layers(pipe) -> int | None:
    """How many layers Clip skip can count back on this model's (first) text encoder; None when it has none."""
    config = getattr(pipe.text_encoder, "config", None)
    return getattr(config, "num_hidden_layers", None)


def check_clip_skip(lab, value) -> int:
    """``clip_skip`` checked for this model (A1111's meaning: 1 is the last layer)."""
    from .toy import is_teaching_model

    layers = clip_skip_layers(lab.pipe)
    if is_teaching_model(lab) or not layers:  # (accepted as A1111's slider accepts it; the run says it does nothing)
        return checks.whole("clip_skip", value, low=1, high=12,
                            hint=" It is A1111's Clip skip, 1 to 12; the teaching model has one layer, so it changes nothing.")
    return checks.whole("clip_skip", value, low=1, high=layers,
                        hint=f" It counts the text encoder's layers from the end (A1111's Clip skip): 1 is the last "
                             f"layer, 2 the penultimate; this model has {layers}.")


# --- conditionings -------------------------------------------------------------------------------------
@dataclass
class Conditioning:
    """The encoder output one text conditions the UNet with: (1, 77 x chunks, D), and SDXL's pooled (1, P)."""

    text: str
    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    chunks: int = 1


def _weighted(z: torch.Tensor, weights: torch.Tensor, emphasis: str, empty: torch.Tensor | None,
              counts: torch.Tensor) -> torch.Tensor:
    """One chunk batch (n, 77, D) with its token weights (n, 77) applied in the emphasis mode's way.

    ``counts``: how often each row's text occurs in the schedule. A1111 restores the mean over the schedule's
    whole batch, repeats included; sdlab encodes each distinct text once and weighs its mean by its count (an
    alternation over 150 steps is 2 texts, not 150). The weights are float32 and the products computed in
    float32, as A1111's float32 multipliers promote a half-precision embedding; the result has z's dtype."""
    if emphasis in ("ignore", "none") or bool((weights == 1).all()):
        return z
    w = weights.float()[..., None]
    if emphasis == "comfyui":
        pick = (weights != 1)[..., None]
        return torch.where(pick, (z.float() - empty.float()) * w + empty.float(), z.float()).to(z.dtype)
    out = z * w
    if emphasis == "original":
        share = (counts / counts.sum()).to(out.dtype)
        before = (z.float().mean(dim=(1, 2)) * share).sum()
        after = (out.mean(dim=(1, 2)) * share).sum()
        if after != 0:  # (the teaching model's all-zero window: there is no mean to restore)
            out = out * (before / after)
    return out.to(z.dtype)


def encode_texts(lab, texts: Sequence[str], *, emphasis: str = "original", clip_skip: int = 1,
                 chunk_count: int | None = None, plain: bool = False) -> list[Conditioning]:
    """Conditionings of several texts encoded as A1111 encodes one prompt's schedule: as one batch, padded
    with empty chunks to the same number of chunks (at least ``chunk_count``), weights applied per chunk
    over the batch. Each distinct text is encoded once. ``plain``: each text as the pipeline reads it (its
    first 75 tokens, no syntax)."""
    distinct = list(dict.fromkeys(texts))
    counts = torch.tensor([float(texts.count(t)) for t in distinct])
    encs = encoders(lab, clip_skip)
    per_text = [[(t, 1.0)] if plain else _pieces(t, emphasis) for t in distinct]
    cut = [[chunks(e.tokenizer, p, backtrack=0)[:1] if plain else chunks(e.tokenizer, p) for p in per_text]
           for e in encs]  # [encoder][text] -> chunks
    n = max([chunk_count or 1] + [len(c) for per_enc in cut for c in per_enc])
    features, pooled_of = [], [None] * len(distinct)
    for e, per_enc in zip(encs, cut):
        empty = chunks(e.tokenizer, [("", 1.0)])[0]
        empty_z = e(empty.ids)[0] if emphasis == "comfyui" else None
        columns = []
        for c in range(n):
            batch = [cs[c] if c < len(cs) else empty for cs in per_enc]
            outs = [e(chunk.ids) for chunk in batch]
            z = torch.cat([o[0] for o in outs])
            weights = torch.tensor([chunk.weights for chunk in batch], device=z.device)
            columns.append(_weighted(z, weights, emphasis, empty_z, counts.to(z.device)))
            if e.pooled and c == 0:
                pooled_of = [o[1] for o in outs]
        features.append(torch.cat(columns, dim=1))  # (texts, 77 n, D_e)
    embeds = torch.cat(features, dim=-1)
    row = {t: i for i, t in enumerate(distinct)}
    return [Conditioning(text=t, embeds=embeds[row[t]:row[t] + 1], pooled=pooled_of[row[t]], chunks=n) for t in texts]


@dataclass
class PromptPlan:
    """What a run's prompts become, decided before the run (text only: nothing is encoded yet).

    prompt / negative: A1111's schedules ``[(end_step, text), ...]`` over ``total_steps``; ``calls`` the
    text of each UNet call (from ``prompt_at``)."""

    prompt: list[tuple[int, str]]
    negative: list[tuple[int, str]]
    total_steps: int
    emphasis: str = "original"
    clip_skip: int = 1
    syntax: str = "a1111"
    notes: list[str] = field(default_factory=list)

    def texts_at(self, call: int) -> tuple[str, str]:
        """(prompt, negative prompt) in effect at UNet call ``call`` (0-based)."""
        return prompt_at(self.prompt, call), prompt_at(self.negative, call)

    @property
    def edits(self) -> bool:
        return len(self.prompt) > 1 or len(self.negative) > 1


def needs_encoding(lab, prompt: str, negative: str, syntax: str, clip_skip: int) -> bool:
    """Whether sdlab must encode the prompts itself (A1111's way) rather than hand the text to the pipeline."""
    if syntax == "a1111" or clip_skip > 1:  # (on SD 2.x, SDXL and the toy only to say that it changes nothing)
        return True
    if syntax == "plain":
        return False
    if uses_syntax(prompt) or uses_syntax(negative) or _RE_NETWORK.search(prompt) or _RE_NETWORK.search(negative):
        return True
    tokenizers = [t for t in (getattr(lab.pipe, "tokenizer", None), getattr(lab.pipe, "tokenizer_2", None)) if t]
    return any(_too_long(t, text) for t in tokenizers for text in (prompt, negative))


def _too_long(tokenizer, text: str) -> bool:
    limit = getattr(tokenizer, "model_max_length", None)
    if not text or not limit or limit > 100_000:
        return False
    return len(tokenizer(text, truncation=False, verbose=False).input_ids) > limit


def plan_prompts(lab, prompt: str, negative: str, *, steps: int, calls_per_step: int = 1,
                 syntax: str = "auto", emphasis: str = "original", clip_skip: int = 1) -> PromptPlan | None:
    """The prompts' plan for a run, or None when the pipeline's own text handling gives A1111's result
    (plain text within 77 tokens, Clip skip 1): then the run is a plain ``pipe(...)`` call."""
    if not needs_encoding(lab, prompt, negative, syntax, clip_skip):
        return None
    total = int(steps) * (2 if calls_per_step >= 2 else 1)  # A1111's SamplerData.total_steps
    notes = []
    if syntax != "plain":
        tags = _RE_NETWORK.findall(prompt) + _RE_NETWORK.findall(negative)
        if tags:
            shown = ", ".join(dict.fromkeys(f"<{kind}:{args}>" for kind, args in tags))
            prompt, negative = (_RE_NETWORK.sub("", t) for t in (prompt, negative))
            notes.append(f"The prompt names extra networks ({shown}): A1111 takes such tags out of the text and "
                         "applies the LoRA / hypernetwork; sdlab takes them out too but loads no network, so the "
                         "picture differs (load a LoRA with lab.pipe.load_lora_weights(...) to apply it yourself).")
        if _RE_AND.search(prompt):
            notes.append("The prompt uses AND, A1111's composable diffusion (each part denoised on its own and the "
                         "guidance of the parts added); sdlab encodes the whole text as one prompt, AND included, so "
                         "the picture differs.")
    if syntax == "plain":
        schedules = [[(total, prompt)], [(total, negative)]]
        emphasis = "none"
    else:
        schedules = [prompt_schedule(prompt, total), prompt_schedule(negative, total)]
    if clip_skip > 1 and lab.family != "sd1":
        why = {"sd2": "A1111 ignores Clip skip for SD 2.x (its text encoder is fixed at OpenCLIP's penultimate "
                      "layer), and so does sdlab",
               "sdxl": "A1111 ignores Clip skip for SDXL unless its option sdxl_clip_l_skip is on, and so does sdlab",
               }.get(lab.family, "the teaching model's text encoder has a single layer")
        notes.append(f"clip_skip={clip_skip} changes nothing on this model: {why}.")
    return PromptPlan(prompt=schedules[0], negative=schedules[1], total_steps=total, emphasis=emphasis,
                      clip_skip=clip_skip, syntax=syntax, notes=notes)


@dataclass
class Encoded:
    """A plan's conditionings, all padded to one chunk count, ready for the pipeline and its callback."""

    plan: PromptPlan
    prompt: list[Conditioning]  # one per schedule entry
    negative: list[Conditioning]
    zero_negative: bool = False  # SDXL with an empty negative prompt: zeros
    padded: bool = False  # the prompt and the negative prompt took different chunk counts (padded to one)

    def entries(self, call: int) -> tuple[int, int]:
        """Which entry of the prompt's and of the negative prompt's schedule UNet call ``call`` uses."""
        p = _entry(self.plan.prompt, call)
        n = min(_entry(self.plan.negative, call), len(self.negative) - 1)  # (SDXL's zeros: one entry)
        return p, n

    def at(self, call: int) -> tuple[Conditioning, Conditioning]:
        p, n = self.entries(call)
        return self.prompt[p], self.negative[n]

    def pipe_kwargs(self) -> dict:
        """The pipeline's embedding arguments for the first call (replacing prompt= and negative_prompt=)."""
        pos, neg = self.at(0)
        kwargs = {"prompt": None, "negative_prompt": None, "prompt_embeds": pos.embeds,
                  "negative_prompt_embeds": neg.embeds}
        if pos.pooled is not None:
            kwargs["pooled_prompt_embeds"] = pos.pooled
            kwargs["negative_pooled_prompt_embeds"] = neg.pooled
        return kwargs


def _entry(schedule: list[tuple[int, str]], call: int) -> int:
    """Index of the schedule entry A1111 uses at model call ``call`` (see ``prompt_at``)."""
    for i, (end, _) in enumerate(schedule):
        if call <= end:
            return i
    return 0


def encode(lab, plan: PromptPlan) -> Encoded:
    """Encode a plan with the model's text encoders (call it holding the model's lock)."""
    options = dict(emphasis=plan.emphasis, clip_skip=plan.clip_skip, plain=plan.syntax == "plain")
    pos_texts, neg_texts = [t for _, t in plan.prompt], [t for _, t in plan.negative]
    zero = (lab.family == "sdxl" and all(t == "" for t in neg_texts)
            and bool(getattr(lab.pipe.config, "force_zeros_for_empty_prompt", False)))
    own = [_chunk_count(lab, texts, plan) for texts in (pos_texts, neg_texts)]
    n = max(own)
    with torch.inference_mode():
        pos = encode_texts(lab, pos_texts, chunk_count=n, **options)
        if not zero:
            neg = encode_texts(lab, neg_texts, chunk_count=n, **options)
        else:
            neg = [Conditioning(text="", embeds=torch.zeros_like(pos[0].embeds),
                                pooled=None if pos[0].pooled is None else torch.zeros_like(pos[0].pooled),
                                chunks=pos[0].chunks)]
    return Encoded(plan=plan, prompt=pos, negative=neg, zero_negative=zero, padded=not zero and own[0] != own[1])


def _chunk_count(lab, texts: Sequence[str], plan: PromptPlan) -> int:
    """How many chunks the longest of the texts takes, before any padding."""
    if plan.syntax == "plain":
        return 1
    tokenizer = lab.pipe.tokenizer
    return max(len(chunks(tokenizer, _pieces(t, plan.emphasis))) for t in dict.fromkeys(texts))


def conditioning(lab, prompt: str, negative_prompt: str = "", *, emphasis: str = "original", clip_skip: int = 1,
                 step: int = 1, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The (prompt, negative prompt) embeddings A1111 conditions step ``step`` of ``steps`` on (its UNet call
    ``step - 1``), read as a run reads them: for looking at them, or for ``sdlab.Denoiser``. What the run
    would say about the prompts (extra-network tags taken out, AND, Clip skip ignored) is said as a notice."""
    from .notices import notice

    checks.lab("lab", lab)
    checks.prompt("prompt", prompt)
    checks.prompt("negative_prompt", negative_prompt)
    emphasis = emphasis_mode(emphasis)
    clip_skip = check_clip_skip(lab, clip_skip)
    steps = checks.whole("steps", steps, low=1, high=checks.MAX_STEPS)
    step = checks.whole("step", step, low=1, high=steps)
    plan = plan_prompts(lab, prompt, negative_prompt, steps=steps, syntax="a1111", emphasis=emphasis,
                        clip_skip=clip_skip)
    for note in plan.notes:
        notice(f"sdlab: {note}", stacklevel=3)
    got = encode(lab, plan)  # (the whole schedule, as A1111 batches it; each distinct text is encoded once)
    pos, neg = got.at(step - 1)
    return pos.embeds, neg.embeds
