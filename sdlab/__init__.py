"""sdlab: explore Stable Diffusion interactively in Jupyter.

Core (no widgets, no plots): models, schedules, samplers, generation, previews.
Views (build on the core): widgets, plots.
"""
from __future__ import annotations

from .accuracy import Accuracy, sampler_accuracy
from .denoiser import Denoiser
from .analysis import Sweep, sweep, variations
from .rng import noise
from .forward_process import add_noise
from .errors import (BusyError, GenerationError, InvalidArgument, MissingDependency, MissingFile, NotSupported,
                     RunTimeout, SdlabError, WrongType)
from .previews import PreviewUnavailable
from .prompt_syntax import prompt_schedule, prompt_weights
from .generation import Job, Prepared, generate, generate_async, prepare, prepare_settings
from .records import Run, StepEvent, StepRecord
from .infotext import parse_infotext, read_settings
from . import notices, previews, toy  # noqa: F401  (sdlab.notices, sdlab.previews, sdlab.toy)
from .models import (
    DEFAULT_MODEL,
    Lab,
    LoadError,
    ModelNotAvailable,
    ModelUnloadedError,
    UnsafeCheckpointError,
    UnsupportedModelError,
    load,
    loaded,
    max_resident,
    set_max_resident,
    unload,
)
from .notices import SdlabNotice, SdlabWarning
from .sampler_catalog import Sampler, samplers
from .settings import RunOptions, Settings
from .noise_schedules import TrainingSchedule, schedules, sigmas

def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdlab")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


__version__ = _version()

# Loaded on first use: the views, so that importing sdlab never imports ipywidgets or matplotlib; the
# schedulers and plans, so that it does not import diffusers either (sdlab.noise_schedules needs neither).
_RECIPES = ("Recipe", "recipe_of", "make_scheduler", "SdlabDEISMultistepScheduler", "SdlabDPMSolverMultistepScheduler",
            "SdlabDPMSolverSDEScheduler", "SdlabEulerDiscreteScheduler", "SdlabHeunDiscreteScheduler",
            "SdlabKDPM2AncestralDiscreteScheduler", "SdlabKDPM2DiscreteScheduler", "SdlabLMSDiscreteScheduler",
            "SdlabUniPCMultistepScheduler")
_LAZY = {"Studio": "sdlab.widgets", "StepViewer": "sdlab.widgets", "SamplerPicker": "sdlab.widgets",
         "ScheduleExplorer": "sdlab.widgets", "plots": "sdlab.plots",
         **{name: "sdlab.recipes" for name in _RECIPES},
         **{name: "sdlab.plans" for name in ("Plan", "plan", "config_changes", "describe", "effective_config")}}


def __getattr__(name: str):
    # (a saved pipeline names sdlab's scheduler classes as attributes of the sdlab package: this finds them)
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith("." + name) else getattr(module, name)
    raise AttributeError(f"module 'sdlab' has no attribute {name!r}")


__all__ = [
    "SdlabError", "InvalidArgument", "WrongType", "RunTimeout", "NotSupported", "MissingFile", "MissingDependency",
    "PreviewUnavailable", "BusyError", "GenerationError", "Job", "Prepared", "Run", "RunOptions", "Settings", "StepEvent", "StepRecord",
    "generate", "prepare", "prepare_settings", "config_changes", "Denoiser",
    "generate_async", "parse_infotext", "read_settings", "prompt_schedule", "prompt_weights", "noise", "variations", "Sweep", "sweep", "add_noise", "toy", "Accuracy", "sampler_accuracy",
    "DEFAULT_MODEL", "Lab", "LoadError", "ModelNotAvailable", "ModelUnloadedError", "SdlabNotice",
    "SdlabWarning", "UnsafeCheckpointError", "UnsupportedModelError", "load", "loaded", "max_resident",
    "set_max_resident", "unload", "__version__", "Plan", "Sampler", "describe", "effective_config",
    "make_scheduler", "plan", "samplers", "TrainingSchedule", "schedules", "sigmas", "Recipe", "recipe_of",
    *_RECIPES[3:],
]
