"""The teaching model as a real diffusers StableDiffusionPipeline whose UNet is an exact denoiser.

- ``ToyUNet`` (the UNet's place): the exact posterior mean of the clean latents given the noisy ones,
  E[x0 | x_t] = sum_j w_j mu_j with w = softmax_j(log pi_j - ||x_t - sqrt(abar_t) mu_j||^2 / (2 (1 - abar_t))),
  over the 432 pictures mu_j, under SD's own training schedule (scaled_linear betas, 1000 steps),
  returned as the prediction type the scheduler expects (epsilon, or v_prediction for "toy-v").
- ``ToyTextEncoder``: turns each of the prompt's tokens into the attribute value it names; the prior
  pi_j favours the pictures that have them (log pi_j = prompt_weight x the sum of the strengths with which the
  prompt names the attributes picture j has: 1 for a plain word, the weight for an A1111-emphasised one). So the empty prompt's denoiser averages over all pictures, "a red circle" over mostly
  red circles, and a negative prompt, which takes the unconditional slot as in SD, favours what it names.
- ``ToyDecoder`` (the VAE's place): the fixed, smooth decoder of ``sdlab.toy.data``.

Size is the attribute guidance moves least: a small and a large shape at one place are nested, so the
guidance term, which extrapolates the average of both, points at the large one. A prompt that names no
size mostly gets large shapes at CFG 7, and a negative "large" hardly helps ("small" in the prompt does).

Why a soft prior rather than keeping only the matching pictures: with a hard selection the negative
prompt's denoiser and the prompt's one would snap to different pictures at low noise, so classifier-free
guidance would push forever and every negative prompt would burn the image. A trained text-to-image
model gives every picture some probability under every prompt; so does the toy.
"""
from __future__ import annotations


import numpy as np
import torch

from ..errors import InvalidArgument
from .. import conventions as C
from . import data as D

PROMPT_WEIGHT = 3.0  # log-prior bonus per named attribute a picture has
TOY_SIZE = 512


def posterior_mean(x: torch.Tensor, sigma: torch.Tensor, log_prior: torch.Tensor, f: D.Factors) -> torch.Tensor:
    """E[x0 | x] for x = x0 + sigma * eps (k-diffusion's variance-exploding form), x0 one of the pictures.

    x: (B, 4, h, w); sigma: (B,); log_prior: (B, N). Computed in float64 on x's device; returns float64.
    w_j = softmax_j(log_prior_j + (x . mu_j - ||mu_j||^2 / 2) / sigma^2), E[x0 | x] = sum_j w_j mu_j, with
    the inner products taken mask by mask (see ``Factors``): exact, 6x fewer products than picture by picture."""
    dev = x.device
    M = D.LATENT_SCALE * torch.as_tensor(f.masks, device=dev)  # (K, hw)
    S = D.LATENT_SCALE * torch.as_tensor(f.fills, device=dev)
    C = torch.as_tensor(f.colours, device=dev)  # (N, 3)
    k = torch.as_tensor(f.mask_of, device=dev)
    xf = x.double().reshape(len(x), 4, -1)
    xs = xf[:, :3] @ S.T  # (B, 3, K): colour channels against each fill
    xm = xf[:, 3] @ M.T  # (B, K)
    dots = (xs[:, :, k] * C.T[None]).sum(1) + xm[:, k]  # (B, N): x . mu_j
    norms = (C * C).sum(1) * (S * S).sum(1)[k] + (M * M).sum(1)[k]  # ||mu_j||^2
    s2 = sigma.double().reshape(-1, 1) ** 2
    w = torch.softmax(log_prior.double() + (dots - 0.5 * norms[None]) / s2, dim=1)  # (B, N)
    K = len(M)
    per_mask = torch.zeros(len(x), K, dtype=w.dtype, device=dev).index_add_(1, k, w)  # (B, K)
    colour = torch.zeros(len(x), 3, K, dtype=w.dtype, device=dev).index_add_(2, k, w[:, None] * C.T[None])
    out = torch.cat([colour @ S, (per_mask @ M)[:, None]], dim=1)  # (B, 4, hw)
    return out.reshape(x.shape)


def _config_mixin():
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin

    return ModelMixin, ConfigMixin, register_to_config


ModelMixin, ConfigMixin, register_to_config = _config_mixin()


class ToyTextEncoder(ModelMixin, ConfigMixin):
    """Token ids -> (B, L, 18): per token, which attribute value it names (``data.token_features``).

    Unknown words (the tokenizer's <|unk|>), stop words, start, end and padding tokens say nothing. The
    second output is the whole window's allowed-values vector (``data.allowed_vector``), as CLIP's pooled
    output sums up its window. There are no weights; the one-element buffer only carries the pipeline's dtype."""

    @register_to_config
    def __init__(self, meanings: list | None = None, hidden_size: int = D.FEATURES):
        super().__init__()
        self._meanings = [tuple(m) if m else None for m in (meanings or [])]
        self.register_buffer("dtype_marker", torch.zeros(1), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask=None, output_hidden_states=None, return_dict=None):
        if output_hidden_states:
            raise InvalidArgument("The toy text encoder has no layers to skip (clip_skip); leave clip_skip at 1.",
                                  argument="clip_skip")
        meanings = [[self._meanings[i] if 0 <= i < len(self._meanings) else None for i in ids]
                    for ids in input_ids.tolist()]
        dtype, device = self.dtype_marker.dtype, input_ids.device
        hidden = torch.as_tensor(np.stack([D.token_features(m) for m in meanings]), dtype=dtype, device=device)
        allowed = torch.as_tensor(np.stack([D.allowed_vector(m) for m in meanings]), dtype=dtype, device=device)
        return hidden, allowed


class ToyUNet(ModelMixin, ConfigMixin):
    """The exact denoiser in the UNet's place (see the module docstring)."""

    @register_to_config
    def __init__(self, sample_size: int = TOY_SIZE // 8, in_channels: int = 4, out_channels: int = 4,
                 cross_attention_dim: int = D.FEATURES, prediction_type: str = "epsilon",
                 prompt_weight: float = PROMPT_WEIGHT, time_cond_proj_dim=None, beta_start: float = 0.00085,
                 beta_end: float = 0.012, num_train_timesteps: int = 1000):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise InvalidArgument(f"prediction_type must be epsilon, v_prediction or sample, not {prediction_type!r}.")
        from ..noise_schedules import TrainingSchedule

        self.training_schedule = TrainingSchedule.from_config(
            {"beta_start": beta_start, "beta_end": beta_end, "beta_schedule": "scaled_linear",
             "num_train_timesteps": num_train_timesteps})
        self.register_buffer("dtype_marker", torch.zeros(1), persistent=False)

    def sigma_of(self, timestep) -> torch.Tensor:
        """Noise level of (fractional) training timesteps, interpolating log sigma as diffusers'
        _sigma_to_t and k-diffusion's t_to_sigma do."""
        t = torch.as_tensor(timestep).detach().double().cpu().reshape(-1).numpy()
        return torch.from_numpy(self.training_schedule._t_to_sigma(t))

    def log_prior(self, encoder_hidden_states: torch.Tensor, f: D.Factors) -> torch.Tensor:
        """log pi_j = prompt_weight x sum over the attribute values picture j has of how strongly the prompt
        names each: per value, the token that names it most strongly (largest |feature|, sign kept), over the
        whole sequence (all of A1111's chunks). A plain prompt names its values with strength 1; emphasis
        ``(red:1.5)`` scales red's share of the log-prior, a negative weight turns it into a penalty. Values
        of groups the prompt does not name get 0 for every picture, which changes nothing in the softmax."""
        h = encoder_hidden_states.double()  # (B, L, 18)
        strongest = h.gather(1, h.abs().argmax(1, keepdim=True))[:, 0]  # (B, 18)
        onehot = torch.as_tensor(f.onehot, device=h.device)
        return self.config.prompt_weight * (strongest @ onehot.T)  # (B, N)

    def denoise(self, x: torch.Tensor, sigma, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """x0 for variance-exploding x = x0 + sigma eps (float64)."""
        f = D.factors(x.shape[-2], x.shape[-1])
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(len(x))
        return posterior_mean(x, sigma, self.log_prior(encoder_hidden_states, f), f)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, timestep_cond=None,
                cross_attention_kwargs=None, added_cond_kwargs=None, return_dict: bool = True, **_):
        sigma = self.sigma_of(timestep).to(sample.device)
        if sigma.numel() == 1:
            sigma = sigma.expand(len(sample))
        s = sigma.reshape(-1, 1, 1, 1)
        x = C.vp_to_ve(sample.double(), s)  # the UNet's input is VP: x_t = alpha x0 + sigma_vp eps
        x0 = self.denoise(x, sigma, encoder_hidden_states)
        out = C.prediction_from_x0(self.config.prediction_type, x0, x, s).to(sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


class ToyDecoder(ModelMixin, ConfigMixin):
    """The toy's fixed, smooth decoder in the VAE's place. ``block_out_channels`` has 4 entries only
    because diffusers' pipelines derive their 8x latent scale from that count."""

    @register_to_config
    def __init__(self, scaling_factor: float = 1.0, latent_channels: int = 4,
                 block_out_channels: tuple = (1, 1, 1, 1), force_upcast: bool = False):
        super().__init__()
        self.register_buffer("dtype_marker", torch.zeros(1), persistent=False)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        image = D.decode(z).to(z.dtype)
        if not return_dict:
            return (image,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=image)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        z = D.encode(x)
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.full_like(z, -30.0)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def forward(self, sample: torch.Tensor):
        return self.decode(self.encode(sample).latent_dist.mode()).sample


def toy_tokenizer():
    """A word-level tokenizer over the toy's vocabulary (and its stop words); anything else is <|unk|>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|startoftext|>", "<|endoftext|>", "<|unk|>"]
    words = specials + D.vocabulary() + list(D.STOP_WORDS)
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|unk|>", pad_token="<|endoftext|>", model_max_length=77)


def build_toy_pipeline(dtype: torch.dtype = torch.float32, prediction_type: str = "epsilon"):
    """The teaching model: a StableDiffusionPipeline with the exact denoiser, its decoder and tokenizer,
    and SD 1.5's scheduler config (PNDM, scaled_linear). Builds in well under a second; no weights."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from ..tiny import SD15_SCHEDULER_CONFIG

    tokenizer = toy_tokenizer()
    meanings = [list(D.WORDS[w]) if w in D.WORDS else None
                for w, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    text_encoder = ToyTextEncoder(meanings=meanings)
    unet = ToyUNet(prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(
        vae=ToyDecoder(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**{**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    for module in (unet, pipe.vae, text_encoder):
        torch.nn.Module.to(module.eval(), dtype=dtype)
    return pipe
