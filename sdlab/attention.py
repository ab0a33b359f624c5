"""Cross-attention maps per step: where in the picture each prompt token is attended to.

Word influence, the counterfactual that needs no attention, lives in sdlab.influence.

The maps are DAAM's (Tang et al., ACL 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross
Attention"): for every cross-attention layer of the UNet, the attention probabilities softmax(q k^T / sqrt(d))
each latent position gives each text token, summed over the heads, upsampled (bicubic) to the latent grid and
summed over the layers. sdlab keeps them per UNet call, for the conditional half of a CFG batch, divided by
the number of heads and layers (so each is a mean attention probability in [0, 1]), float16, at latent
resolution, for the prompt's own tokens only (not start, end or padding).

They are read by forward pre-hooks on the layers (``attn2`` of diffusers' transformer blocks): a hook recomputes
q and k from the layer's inputs and computes the probabilities beside the layer, which runs as it always
does, so a recorded run's image is bit-identical to one without recording.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidArgument


def cross_attention_layers(unet) -> list:
    """The UNet's cross-attention modules (diffusers' ``Attention`` with ``is_cross_attention``)."""
    return [m for name, m in unet.named_modules() if name.endswith("attn2") and getattr(m, "is_cross_attention", False)]


@dataclass
class AttentionMaps:
    """The recorded maps of a run: ``tokens`` (the prompt's words as the tokenizer split them), ``positions``
    (their places in the encoder's sequence) and ``steps``: per UNet call, a (batch, tokens, h, w) float16 map."""

    tokens: list[str]
    positions: list[int]
    weights: list[float] = field(default_factory=list)  # each token's A1111 emphasis weight (1 for plain text)
    calls: list[torch.Tensor] = field(default_factory=list)
    step_of_call: list[int] = field(default_factory=list)

    def _index(self, word) -> list[int]:
        if isinstance(word, int) and not isinstance(word, bool):
            if not 0 <= word < len(self.tokens):
                raise InvalidArgument(f"word={word} is out of range: the prompt has {len(self.tokens)} tokens.",
                                      argument="word")
            return [word]
        if not isinstance(word, str):
            raise InvalidArgument(f"word must be a word of the prompt or a token index, not {word!r:.40}.",
                                  argument="word")
        hits = [i for i, t in enumerate(self.tokens) if t == word.strip().lower()]
        if not hits:
            raise InvalidArgument(f"{word!r} is not a token of the prompt; its tokens are {self.tokens}.",
                                  argument="word")
        return hits

    def map(self, word, step=None, image: int = 0) -> np.ndarray:
        """An H x W map (latent resolution) of where ``word`` (a word, or a token index) is attended to: at one
        user step, a range of steps (``range(5, 10)``), or the whole run (None); non-negative, its maximum 1."""
        from . import checks

        rows = self._index(word)
        batch = self.calls[0].shape[0] if self.calls else 1
        image = checks.whole("image", image, low=0, high=batch - 1, hint=" It is the image's index in the batch.")
        if step is None:
            picks = list(range(len(self.calls)))
        else:
            raw = list(step) if isinstance(step, (range, list, tuple)) else [step]
            wanted = set(checks.wholes("step", raw, low=1, high=checks.MAX_STEPS))
            picks = [i for i, s in enumerate(self.step_of_call) if s in wanted]
            if not picks:
                raise InvalidArgument(f"step={step!r}: no recorded call belongs to it.", argument="step")
        total = sum(self.calls[i][image, rows].float().sum(0) for i in picks)
        peak = float(total.max())
        return (total / peak if peak > 0 else total).numpy()

    def labels(self) -> list[str]:
        """The tokens as A1111 writes weighted words: ``(red:1.5)`` where the prompt gave a weight."""
        return [t if w == 1 else f"({t}:{w:.3g})" for t, w in zip(self.tokens, self.weights or [1.0] * len(self.tokens))]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.calls)


class AttentionRecorder:
    """Installs the read-only hooks for one run and turns what they see into one map per UNet call."""

    def __init__(self, unet, positions: list[int], height: int, width: int, cfg: bool, batch: int = 1):
        self.batch = batch
        self.layers = cross_attention_layers(unet) if positions else []  # (an empty prompt: nothing to map)
        self.positions = torch.as_tensor(positions, dtype=torch.long)
        self.h, self.w, self.cfg = height, width, cfg
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._handles: list = []

    def __enter__(self):
        self._handles = [layer.register_forward_pre_hook(self._hook, with_kwargs=True) for layer in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _hook(self, attn, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        if context is None or hidden.dim() != 3:
            return
        if self.cfg:  # the pipeline puts the unconditional half first: only the prompt's half is looked at
            hidden, context = hidden[len(hidden) // 2:], context[len(context) // 2:]
        q = attn.head_to_batch_dim(attn.to_q(hidden))
        k = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(q, k, None)  # (batch x heads, HW, T)
        heads = attn.heads
        b, hw, _ = probs.shape
        probs = probs.view(b // heads, heads, hw, -1)
        per = probs.sum(1)[..., self.positions.to(probs.device)]  # (B, HW, tokens)
        f = int(round((self.h * self.w / hw) ** 0.5))
        grid = per.transpose(1, 2).reshape(per.shape[0], -1, self.h // f, self.w // f).float()
        up = F.interpolate(grid, size=(self.h, self.w), mode="bicubic", align_corners=False).clamp_min(0)
        self._sum = up if self._sum is None else self._sum + up
        self._count += heads

    def take(self) -> torch.Tensor | None:
        """The mean attention map of the call that just ended (B, tokens, h, w), float16 on the CPU."""
        if self._sum is None:
            return torch.zeros((self.batch, 0, self.h, self.w), dtype=torch.float16)
        out = (self._sum / self._count).to(torch.float16).cpu()
        self._sum, self._count = None, 0
        return out


def prompt_tokens(tokenizer, ids: list[int], weights: list[float] | None = None):
    """The prompt's own tokens of an encoder sequence (start, end and padding left out): words, positions and
    their weights."""
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    words, positions, kept = [], [], []
    for i, t in enumerate(ids):
        if t in specials:
            continue
        words.append(tokenizer.convert_ids_to_tokens(int(t)).replace("</w>", "").lower())
        positions.append(i)
        kept.append(1.0 if weights is None else float(weights[i]))
    return words, positions, kept
