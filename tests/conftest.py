"""Shared fixtures. Nothing here downloads: the hub is off for the whole test run."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs as one pytest-xdist worker per core (pyproject's addopts): each computes on one thread,
    # so that two workers' torch thread pools do not fight over the cores (with two threads each, OpenMP's
    # spinning made the whole run slower than one process); notebook kernels started here inherit it
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

import sdlab
from sdlab.tiny import build_tiny_pipeline


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(autouse=True)
def _every_notice_said_afresh():
    """sdlab says each notice once per session; each test is a session of its own in that respect."""
    sdlab.notices.forget_notices()


@pytest.fixture
def tiny() -> sdlab.Lab:
    """The built-in tiny model (resident across tests; cheap to rebuild if a test unloaded it)."""
    return sdlab.load("tiny")


@pytest.fixture
def lab(tiny) -> sdlab.Lab:
    """The tiny model with diffusers' progress bars off: what most tests generate with."""
    tiny.pipe.set_progress_bar_config(disable=True)
    return tiny


@pytest.fixture
def toy() -> sdlab.Lab:
    """The built-in teaching model (exact denoiser), progress bars off."""
    lab = sdlab.load("toy")
    lab.pipe.set_progress_bar_config(disable=True)
    return lab


@pytest.fixture
def clean_registry():
    """Start and end with nothing resident, and the default residency limit."""
    sdlab.unload()
    limit = sdlab.max_resident()
    yield
    sdlab.set_max_resident(limit)
    sdlab.unload()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny pipeline saved as a diffusers folder."""
    path = tmp_path_factory.mktemp("models") / "tiny-diffusers"
    build_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_single_file(tmp_path_factory):
    """The tiny pipeline saved as one A1111-style .safetensors checkpoint."""
    from ldm_checkpoint import save_sd1_single_file

    path = tmp_path_factory.mktemp("models") / "tiny-a1111.safetensors"
    save_sd1_single_file(build_tiny_pipeline(), path)
    return path


@pytest.fixture(scope="session")
def tiny_v_folder(tiny_folder, tmp_path_factory):
    """The tiny pipeline folder with a v-prediction scheduler config (as SD 2.x 768-v ships)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("models") / "tiny-v"
    shutil.copytree(tiny_folder, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "v_prediction"}))
    return folder


@pytest.fixture
def real_model(clean_registry) -> sdlab.Lab:
    """sdlab's default model from the local cache; the test skips where it is not cached (no downloads)."""
    try:
        lab = sdlab.load(sdlab.DEFAULT_MODEL, offline=True)
    except sdlab.ModelNotAvailable:
        pytest.skip(f"{sdlab.DEFAULT_MODEL} is not in the local Hugging Face cache")
    lab.pipe.set_progress_bar_config(disable=True)
    return lab
