"""Word influence: what taking one word out of the prompt changes in the x0 prediction, step by step.

For a step of a recorded run, the denoiser (``sdlab.Denoiser``, the run's guidance scale and negative prompt)
predicts the clean picture from the sample the run held entering that step, once with the prompt and once
with the word taken out; the difference, summed over the latent channels, is a map of what the word does
there. One extra denoiser call per word and step. On the teaching model the denoiser is exact, so the map is
exactly the word's effect; on Stable Diffusion it is the counterfactual that an attention map only suggests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import checks
from .errors import InvalidArgument, WrongType


def word_list(name: str, words) -> list[str]:
    """Words given as one string or a list of strings, checked."""
    if isinstance(words, str):
        words = [words]
    if isinstance(words, (bytes, dict)) or not isinstance(words, (list, tuple)):
        raise WrongType(f"{name} must be a word of the prompt or a list of them, not {type(words).__name__} "
                        f"{words!r:.40}.", argument=name)
    if not words:
        raise InvalidArgument(f"{name} is empty: name at least one word of the prompt.", argument=name)
    return [checks.text(name, w) for w in words]


def step_list(name: str, steps, total: int) -> list[int]:
    """User steps given as one number or a list of them, checked against the run's step count."""
    if not isinstance(steps, (list, tuple, range)) and not hasattr(steps, "tolist"):
        steps = [steps]
    return checks.wholes(name, list(steps), low=1, high=total, hint=f" The run has {total} steps.")


def without_word(prompt: str, word: str) -> str:
    """The prompt with every whole-word occurrence of ``word`` taken out (case-insensitive)."""
    import re

    return re.sub(rf"(?i)(?<!\w){re.escape(word)}(?!\w)", "", prompt)


@dataclass
class Influence:
    """Word influence maps of a run: ``maps[word][step]`` an (h, w) array, the change |x0(prompt) -
    x0(prompt without the word)| summed over the latent channels, for the sample entering that step."""

    words: list[str]
    steps: list[int]
    sigmas: dict[int, float]
    maps: dict[str, dict[int, np.ndarray]]
    prompt: str | None = None  # the prompt of the run it was computed from

    def map(self, word: str, step: int) -> np.ndarray:
        if word not in self.maps:
            raise InvalidArgument(f"word={word!r}: the influence was computed for {self.words}.", argument="word")
        if step not in self.maps[word]:
            raise InvalidArgument(f"step={step!r}: the influence was computed at steps {self.steps}.", argument="step")
        return self.maps[word][step]

    def total(self, word: str) -> dict[int, float]:
        """The whole map's mass at each step: how much the word still changes the prediction there."""
        return {k: float(self.map(word, k).sum()) for k in self.steps}


def sample_entering(run, lab, step: int) -> tuple[torch.Tensor, float]:
    """(x in k-diffusion's variance-exploding form, sigma) of the sample the sampler held entering ``step``."""
    from . import conventions as C
    from .generation import initial_noise

    plan = run.plan
    sigma = float(plan.sigmas[step - 1])
    if step == 1:
        x_vp = initial_noise(lab, run.settings).float().cpu()  # unit noise: VP x_T at sigma_max is noise itself
        return C.vp_to_ve(x_vp.double(), sigma).float(), sigma
    before = [r for r in run.records if r.step == step - 1]
    if not before or before[-1].latents is None:
        raise InvalidArgument(f"The run kept no sample for step {step} (record=False?); generate with record=True.",
                              argument="run")
    rec = before[-1]
    x_vp = rec.view("xt")
    return C.vp_to_ve(x_vp.double(), sigma).float(), sigma


def word_influence(lab, run, words, steps) -> Influence:
    """Word influence of ``words`` at ``steps`` (user steps, 1-based) of ``run``: one denoiser call with the
    prompt and one without each word, on the sample the run held entering the step (``sdlab.Denoiser``, the
    run's guidance scale and negative prompt). On the teaching model the denoiser is exact, so the map is
    what the word does; on Stable Diffusion it is the counterfactual an attention map only suggests."""
    from .denoiser import Denoiser

    words = list(dict.fromkeys(word_list("words", words)))
    steps = step_list("steps", steps, run.settings.steps)
    if getattr(run, "model", None) != getattr(lab, "source", None):
        raise InvalidArgument(f"run was made by {run.model!r}, not by this model ({lab.source!r}): word influence "
                              "re-runs the run's own denoiser. Use the lab that made it.", argument="run")
    if type(lab.pipe).__name__ != "StableDiffusionPipeline":
        from .errors import NotSupported

        raise NotSupported(f"Word influence needs sdlab.Denoiser, which supports SD 1.x / 2.x and the teaching model; "
                           f"this model is a {type(lab.pipe).__name__} (SDXL's added conditioning is not wired). "
                           "Record its cross-attention maps instead (attention=True).", argument="run")
    missing = [w for w in words if without_word(run.settings.prompt, w) == run.settings.prompt]
    if missing:
        raise InvalidArgument(f"words: {', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not in "
                              f"the prompt {run.settings.prompt!r:.80}; name words it has.", argument="words")
    s = run.settings

    def denoiser(prompt: str, k: int):  # the run's reading of its prompts, at step k (prompt editing included)
        return Denoiser(lab, prompt, s.negative_prompt, s.cfg, emphasis=s.emphasis, clip_skip=s.clip_skip, step=k,
                        steps=s.steps)

    maps: dict[str, dict[int, np.ndarray]] = {w: {} for w in words}
    sigmas = {}
    for k in steps:
        x, sigma = sample_entering(run, lab, k)
        sigmas[k] = sigma
        x0 = denoiser(s.prompt, k)(x, sigma)
        for w in words:
            maps[w][k] = (x0 - denoiser(without_word(s.prompt, w), k)(x, sigma)).abs().sum(1)[0].float().numpy()
    return Influence(words=words, steps=list(steps), sigmas=sigmas, maps=maps, prompt=s.prompt)
