"""A model's denoiser in k-diffusion's convention: D(x, sigma) -> x0 for x = x0 + sigma * eps.

``Denoiser(lab, prompt, negative_prompt, cfg)`` wraps the lab's own UNet and text encoder the way
k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` wrap a model (Karras et al. 2022,
eq. 7 preconditioning): the UNet sees x / sqrt(sigma^2 + 1) at the training timestep whose sigma that is
(log-sigma interpolation, as diffusers' ``_sigma_to_t`` and k-diffusion's ``sigma_to_t``), and its output
becomes x0 for its prediction type. Classifier-free guidance is combined on the model output, as the
diffusers pipeline does, and only when the pipeline would apply it (``guidance_applies``).

Used by the sampler-accuracy reference solver, to run k-diffusion's samplers on sdlab's models, and to
write a sampler by hand (notebook 5): ``D = sdlab.Denoiser(lab, prompt)``, then ``x0 = D(x, sigma)``.
"""
from __future__ import annotations

import torch

from . import checks
from .errors import NotSupported
from . import conventions as C
from . import noise_schedules as S
from .toy import is_teaching_model


def guidance_applies(pipe, cfg: float) -> bool:
    """Whether the pipeline makes the two predictions of classifier-free guidance (its
    do_classifier_free_guidance: a scale above 1 on a model without guidance embedding)."""
    return cfg > 1 and pipe.unet.config.get("time_cond_proj_dim") is None


class Denoiser:
    """D(x, sigma) for SD 1.x / 2.x pipelines and the toy model (SDXL's extra conditioning is not wired)."""

    def __init__(self, lab, prompt: str = "", negative_prompt: str = "", cfg: float = 7.0, *,
                 emphasis: str = "original", clip_skip: int = 1, step: int = 1, steps: int = 20):
        """prompt / negative_prompt are read as a run reads them (A1111's syntax, sdlab.prompt_encoding): with
        ``emphasis`` and ``clip_skip``, and where the prompt is edited during sampling, the text in effect at
        step ``step`` of ``steps``."""
        checks.lab("lab", lab)
        prompt, negative_prompt = checks.prompt("prompt", prompt), checks.prompt("negative_prompt", negative_prompt)
        cfg = checks.number("cfg", cfg, low=0, high=1000)
        pipe = lab.pipe
        if type(pipe).__name__ != "StableDiffusionPipeline":
            raise NotSupported(f"The denoiser wrapper supports SD 1.x / 2.x and the toy model; this model is a "
                                      f"{type(pipe).__name__} (SDXL's added conditioning is not wired).")
        self.unet = pipe.unet
        self.prediction_type = lab.prediction_type
        self.training = S.TrainingSchedule.of(lab)
        self.cfg = float(cfg)
        self.guided = guidance_applies(pipe, self.cfg)
        # the exact toy denoiser computes in float64; a trained UNet in its own dtype
        self.exact = is_teaching_model(self.unet)
        self.dtype = torch.float64 if self.exact else self.unet.dtype
        self.device = self.unet.device
        from .prompt_encoding import check_clip_skip, conditioning, emphasis_mode, needs_encoding

        emphasis, clip_skip = emphasis_mode(emphasis), check_clip_skip(lab, clip_skip)
        steps = checks.whole("steps", steps, low=1, high=checks.MAX_STEPS)
        step = checks.whole("step", step, low=1, high=steps)
        if needs_encoding(lab, prompt, negative_prompt, "auto", clip_skip):
            # A1111's prompt syntax, a prompt past 77 tokens or Clip skip: read as a run reads it
            cond, uncond = conditioning(lab, prompt, negative_prompt, emphasis=emphasis, clip_skip=clip_skip,
                                        step=step, steps=steps)
        else:
            with torch.no_grad():
                cond, uncond = pipe.encode_prompt(prompt, self.device, 1, self.guided, negative_prompt or None)
        self.context = torch.cat([uncond, cond]) if self.guided else cond
        self.calls = 0

    @property
    def sigma_min(self) -> float:
        return self.training.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.training.sigma_max

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """x0 for x (B, 4, h, w, variance-exploding) at noise level sigma (a number, or one per sample)."""
        x = checks.latents("x", x, channels=self.unet.config.in_channels)
        sigma = checks.reals("sigma", sigma, low=1e-10, high=1e6)
        if sigma.size not in (1, len(x)):
            raise checks.InvalidArgument(f"sigma must be one noise level or one per sample ({len(x)}), not "
                                         f"{sigma.size}.", argument="sigma")
        return self.x0(x, sigma)

    @torch.no_grad()
    def x0(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``D(x, sigma)`` unchecked: the solvers' inner loop (sampler_accuracy), with values made there."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        b = len(x)
        sig = sigma.expand(b) if sigma.numel() == 1 else sigma
        t = torch.as_tensor(self.training._sigma_to_t(sig.numpy()), dtype=torch.float64)
        c_in = torch.as_tensor(C.vp_scale(sig.numpy()))[:, None, None, None]
        inp = (x.double().cpu() * c_in).to(device=self.device, dtype=self.dtype)
        n = 2 if self.guided else 1
        context = self.context.repeat_interleave(b, dim=0)
        out = self.unet(inp.repeat(n, 1, 1, 1), t.repeat(n).to(self.device), encoder_hidden_states=context.to(self.device),
                        return_dict=False)[0].double().cpu()
        self.calls += 1
        if self.guided:
            uncond, cond = out.chunk(2)
            out = uncond + self.cfg * (cond - uncond)
        return C.x0_from_prediction(self.prediction_type, out, x.double().cpu(), sig[:, None, None, None])
