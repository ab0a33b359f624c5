"""The built-in tiny model: Stable Diffusion's architecture with random weights, built in code.

UNet, VAE, CLIP text encoder and tokenizer are real diffusers / transformers classes, wired exactly
as in SD 1.x (8x VAE downsampling, 4 latent channels, cross-attention on CLIP embeddings, the SD 1.5
scheduler config), only narrow. It downloads nothing and loads in well under a second on a CPU, so
tests and offline demos run everywhere. Its images are noise: the weights were never trained.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

TINY_SEED = 20240501  # fixed so that every kernel builds the very same tiny model
TINY_SIZE = 64  # default image size in pixels (latents 8x8)

# SD 1.5's shipped scheduler config (stable-diffusion-v1-5, scheduler/scheduler_config.json; it also
# carries clip_sample=False, which PNDMScheduler does not take).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level BPE alphabet (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_tokenizer():
    """A CLIPTokenizer over the 256 byte symbols (no merges): every byte is a token."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=77)


def build_tiny_pipeline(dtype: torch.dtype = torch.float32):
    """Build the tiny StableDiffusionPipeline on the CPU. Deterministic: the same weights every time."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        # SD 1.x's block layout (4 levels, 2 layers each, attention in the first three), only narrow, so
        # that conversions written for SD's layout (single-file checkpoints) apply unchanged.
        unet = UNet2DConditionModel(
            sample_size=TINY_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(16, 16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
        )
        vae = AutoencoderKL(
            sample_size=TINY_SIZE, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(8, 8, 16, 16), norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
    scheduler = PNDMScheduler(**SD15_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder):
        # plain nn.Module.to: diffusers' override warns about fp32-only modules, which these have none of
        torch.nn.Module.to(module.eval(), dtype=dtype)
    return pipe


# SDXL base's shipped scheduler config (stabilityai/stable-diffusion-xl-base-1.0, scheduler/).
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}


def build_tiny_sdxl_pipeline(dtype: torch.dtype = torch.float32):
    """A tiny StableDiffusionXLPipeline: two CLIP text encoders (the second with a projection), the
    text_time added conditioning, SDXL's Euler scheduler config and VAE scaling. Random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    text_cfg = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                    num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 1)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg))
        # SDXL's layout (levels without, then with attention; linear projections; text_time conditioning)
        unet = UNet2DConditionModel(
            sample_size=TINY_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), cross_attention_dim=64,
            attention_head_dim=(2, 4, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1, 2),
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32, norm_num_groups=8,
        )
        vae = AutoencoderKL(
            sample_size=TINY_SIZE, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(8, 8, 16, 16), norm_num_groups=4, scaling_factor=0.13025,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,
    )
    for module in (unet, vae, text_encoder, text_encoder_2):
        torch.nn.Module.to(module.eval(), dtype=dtype)
    return pipe

