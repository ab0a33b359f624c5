"""k-diffusion's samplers (what A1111 and ComfyUI run) as an independent reference for sdlab's.

k-diffusion 0.1.1 is installed without its dependencies (`make test` does it): its package __init__ and
its requirements pull training code, a CUDA build of torch and wandb, while the samplers in
k_diffusion/sampling.py need only torch, scipy, torchsde, tqdm and torchdiffeq. So this loads
k_diffusion.sampling and k_diffusion.external without running the package's __init__; its utils module
imports torchvision at the top for image helpers the samplers never call, so where torchvision is
missing that one import statement, and nothing else, gets an empty stand-in (torchvision stays absent
for everyone else: diffusers and transformers probe for it).
"""
from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path


def load():
    """(k_diffusion.sampling, k_diffusion.external), or raise ImportError naming what is missing."""
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("k-diffusion is not installed (make test installs it: pip install --no-deps k-diffusion)")
        package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("k_diffusion", None, is_package=True))
        package.__path__ = list(spec.submodule_search_locations)  # its __init__ is not run
        sys.modules["k_diffusion"] = package
    if "k_diffusion.utils" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        _load_utils_without_torchvision(Path(sys.modules["k_diffusion"].__path__[0]) / "utils.py")
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


def _load_utils_without_torchvision(path: Path) -> None:
    module = types.ModuleType("k_diffusion.utils")
    module.__file__, module.__package__ = str(path), "k_diffusion"
    real_import = builtins.__import__

    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        if name.split(".")[0] == "torchvision" and globals is module.__dict__:
            return types.SimpleNamespace(functional=types.SimpleNamespace())
        return real_import(name, globals, locals, fromlist, level)

    sys.modules["k_diffusion.utils"] = module
    builtins.__import__ = guarded
    try:
        exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules["k_diffusion.utils"]
        raise
    finally:
        builtins.__import__ = real_import


class CFGDenoiser:
    """A1111's CFGDenoiser around k-diffusion's DiscreteEpsDDPMDenoiser: the model's eps at
    t = sigma_to_t(sigma) (fractional, quantize=False as A1111's default), guidance on eps."""

    def __init__(self, lab, prompt: str, negative_prompt: str, cfg: float, dtype=None):
        import torch

        _, external = load()
        pipe = lab.pipe
        self.cfg = float(cfg)
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt(prompt, lab.device, 1, True, negative_prompt or None)
        self.dtype = dtype or pipe.unet.dtype

        def eps_model(x, t, **kwargs):
            out = pipe.unet(torch.cat([x, x]).to(self.dtype), torch.cat([t, t]).to(self.dtype),
                            encoder_hidden_states=torch.cat([uncond, cond]).to(self.dtype), return_dict=False)[0]
            u, c = out.double().chunk(2)
            return (u + self.cfg * (c - u)).to(x.dtype)

        ac = lab.default_scheduler.alphas_cumprod.to(torch.float64)
        self.model = external.DiscreteEpsDDPMDenoiser(eps_model, ac, quantize=False)

    def __call__(self, x, sigma, **kwargs):
        return self.model(x, sigma, **kwargs)
