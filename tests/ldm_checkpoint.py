"""Write a diffusers SD 1.x pipeline as a single-file checkpoint in the original (LDM / A1111) layout.

diffusers can read such files (from_single_file) but ships no writer, so the tests carry the inverse
of its key mapping, after diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py. It
applies to SD 1.x's block layout, which sdlab's tiny model follows.
"""
from __future__ import annotations

import torch
from safetensors.torch import save_file

_UNET_MAP = [
    ("time_embed.0.weight", "time_embedding.linear_1.weight"), ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"), ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"), ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"), ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"), ("out.2.bias", "conv_out.bias"),
]
_UNET_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def _unet_layer_map() -> list[tuple[str, str]]:
    m = []
    for i in range(4):
        for j in range(2):
            m.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i < 3:
                m.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            m.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if i > 0:
                m.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < 3:
            m.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            m.append((f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.", f"up_blocks.{i}.upsamplers.0."))
    m.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        m.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return m


def unet_to_ldm(sd: dict) -> dict:
    mapping = {k: k for k in sd}
    for ldm, hf in _UNET_MAP:
        mapping[hf] = ldm
    for k, v in mapping.items():
        if "resnets" in k:
            for ldm, hf in _UNET_RESNET:
                v = v.replace(hf, ldm)
            mapping[k] = v
    layer_map = _unet_layer_map()
    for k, v in mapping.items():
        for ldm, hf in layer_map:
            v = v.replace(hf, ldm)
        mapping[k] = v
    return {v: sd[k] for k, v in mapping.items()}


def vae_to_ldm(sd: dict) -> dict:
    m = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(4):
        for j in range(2):
            m.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < 3:
            m.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            m.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(3):
            m.append((f"decoder.up.{3 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        m.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for k, t in sd.items():
        v = k
        for ldm, hf in m:
            v = v.replace(hf, ldm)
        if "attentions" in k:
            for ldm, hf in attn:
                v = v.replace(hf, ldm)
            if t.ndim == 2:  # the original VAE attention uses 1x1 convolutions
                t = t[:, :, None, None]
        out[v] = t
    return out


def save_sd1_single_file(pipe, path) -> None:
    """Save pipe's UNet, VAE and CLIP text encoder as one A1111-style .safetensors file."""
    state = {}
    for k, t in unet_to_ldm(pipe.unet.state_dict()).items():
        state["model.diffusion_model." + k] = t
    for k, t in vae_to_ldm(pipe.vae.state_dict()).items():
        state["first_stage_model." + k] = t
    for k, t in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; checkpoints keep the text_model. level
        state["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = t
    save_file({k: v.detach().contiguous().to(torch.float32) for k, v in state.items()}, str(path))
