"""sdlab.load / loaded / unload on models the tests build themselves (nothing is downloaded)."""
from __future__ import annotations

import gc
import json
import shutil
import sys
import weakref

import pytest
import torch

import sdlab
from sdlab import devices, models


def _image(lab, seed=3, steps=3):
    return lab.pipe("a red cube", num_inference_steps=steps, generator=lab.generator(seed),
                    output_type="pt").images


def _count_loads(monkeypatch) -> list:
    calls = []
    real = models._load_pipeline

    def counting(*args, **kwargs):
        calls.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "_load_pipeline", counting)
    return calls


def test_tiny_loads_once_and_stays_resident(clean_registry, monkeypatch):
    calls = _count_loads(monkeypatch)
    with pytest.warns(sdlab.SdlabNotice, match="noise"):
        lab = sdlab.load("tiny")
    again = sdlab.load("tiny")
    assert again is lab
    assert calls == [("tiny", "tiny")]  # the second call read nothing and built nothing
    assert lab.family == "sd1" and lab.device == torch.device("cpu") and lab.dtype == torch.float32
    assert type(lab.pipe).__name__ == "StableDiffusionPipeline"
    rows = sdlab.loaded()
    assert [(r.source, r.family, r.device, r.dtype) for r in rows] == [("tiny", "sd1", "cpu", "float32")]
    assert rows[0].parameters == lab.parameters > 100_000
    assert rows[0].memory_bytes >= lab.parameters * 4  # float32 weights, plus buffers
    assert "images are noise" in repr(lab)


def test_different_dtype_is_a_different_resident(clean_registry, monkeypatch):
    calls = _count_loads(monkeypatch)
    a = sdlab.load("tiny")
    b = sdlab.load("tiny", dtype="bfloat16")
    assert a is not b and b.dtype == torch.bfloat16
    assert next(b.pipe.unet.parameters()).dtype == torch.bfloat16
    assert len(calls) == 2 and len(sdlab.loaded()) == 2


def test_tiny_is_the_same_model_in_every_process_and_generates(tiny):
    other = models.build_tiny_pipeline()
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(tiny.pipe, name).state_dict(), getattr(other, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    out = _image(tiny)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert torch.equal(out, _image(tiny))  # same seed, same picture
    assert not torch.equal(out, _image(tiny, seed=4))


def test_local_folder_round_trip(clean_registry, tiny_folder, tiny):
    lab = sdlab.load(tiny_folder)
    assert lab.kind == "folder" and lab.family == "sd1" and lab is not tiny
    assert sdlab.load(str(tiny_folder)) is lab  # same folder, same handle
    assert torch.equal(_image(lab), _image(tiny))


def test_single_safetensors_file_round_trip(clean_registry, tiny_single_file, tiny_folder, tiny):
    assert models.checkpoint_family(str(tiny_single_file)) == "sd1"
    # Offline, diffusers needs the model's diffusers config; config= names a local folder of the same family.
    lab = sdlab.load(tiny_single_file, config=str(tiny_folder))
    assert lab.kind == "single_file" and lab.family == "sd1"
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(tiny.pipe, name).state_dict(), getattr(lab.pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(_image(lab), _image(tiny))


def test_single_file_without_config_offline_says_what_to_do(clean_registry, tiny_single_file):
    with pytest.raises(sdlab.LoadError, match="config="):
        sdlab.load(tiny_single_file)
    assert sdlab.loaded() == []


def test_unload_really_frees(clean_registry):
    lab = sdlab.load("tiny")
    unet_ref = weakref.ref(lab.pipe.unet)
    pipe_ref = weakref.ref(lab.pipe)
    # An exception traceback stored by the REPL pins every tensor its frames saw.
    def fails(unet):
        raise RuntimeError("boom")
    try:
        fails(lab.pipe.unet)
    except RuntimeError:
        sys.last_type, sys.last_value, sys.last_traceback = sys.exc_info()
    report = sdlab.unload(lab)
    assert [r.source for r in report.freed] == ["tiny"] and report.memory_bytes > 0
    assert "Unloaded 1 model" in str(report)
    gc.collect()
    assert unet_ref() is None and pipe_ref() is None
    assert sdlab.loaded() == []
    assert sys.last_traceback is None
    with pytest.raises(sdlab.ModelUnloadedError, match="Load it again"):
        lab.pipe
    # loading again gives a fresh, working handle
    fresh = sdlab.load("tiny")
    assert fresh is not lab and fresh.is_loaded


def test_unload_by_source_and_all(clean_registry):
    sdlab.load("tiny")
    sdlab.load("tiny", dtype="bfloat16")
    assert len(sdlab.unload("tiny").freed) == 2
    assert str(sdlab.unload()) == "Nothing was loaded; nothing to free."


def test_least_recently_used_is_unloaded_beyond_the_limit(clean_registry):
    sdlab.set_max_resident(1)
    first = sdlab.load("tiny")
    with pytest.warns(sdlab.SdlabNotice, match="least recently used"):
        second = sdlab.load("tiny", dtype="bfloat16")
    assert not first.is_loaded and second.is_loaded
    assert [r.dtype for r in sdlab.loaded()] == ["bfloat16"]
    with pytest.raises(ValueError):
        sdlab.set_max_resident(0)


def test_default_model_falls_back_to_the_teaching_model_with_a_notice(clean_registry, monkeypatch):
    monkeypatch.setenv("SDLAB_MODEL", "sdlab-tests/never-cached-model")
    with pytest.warns(sdlab.SdlabNotice, match=r'using the built-in teaching model \("toy"\) because '
                                               "sdlab-tests/never-cached-model is not available here: it is not in "
                                               "this machine's Hugging Face cache and sdlab is offline"):
        lab = sdlab.load()
    assert lab.is_toy and lab.family == "toy" and lab.requested == "sdlab-tests/never-cached-model"


def test_default_model_id_is_used_when_no_env(clean_registry, monkeypatch):
    monkeypatch.delenv("SDLAB_MODEL", raising=False)
    with pytest.warns(sdlab.SdlabNotice, match="using the built-in teaching model"):
        lab = sdlab.load(offline=True)
    assert lab.requested == sdlab.DEFAULT_MODEL


def test_hub_id_not_cached_names_model_and_fix(clean_registry):
    with pytest.raises(sdlab.ModelNotAvailable, match=r"sdlab-tests/never-cached-model.*hf download"):
        sdlab.load("sdlab-tests/never-cached-model", offline=True)
    assert sdlab.loaded() == []


@pytest.mark.parametrize("name, match", [
    ("no/such/place/model", "model: no such file or folder"),
    ("./missing.safetensors", "model: no such file or folder"),
    ("not a model id", "neither an existing path nor a hub id"),
    ("", "must be a hub id"),
])
def test_bad_names(name, match):
    with pytest.raises(sdlab.LoadError, match=match):
        sdlab.load(name)


def test_wrong_files_and_folders(clean_registry, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(sdlab.LoadError, match="not a model file"):
        sdlab.load(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sdlab.LoadError, match="no model_index.json"):
        sdlab.load(empty)
    (empty / "model.safetensors").write_bytes(b"x")
    with pytest.raises(sdlab.LoadError, match="load that file instead"):
        sdlab.load(empty)
    with pytest.raises(sdlab.LoadError, match="not a readable .safetensors"):
        sdlab.load(empty / "model.safetensors")
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(sdlab.UnsupportedModelError, match="FluxPipeline"):
        sdlab.load(flux)
    assert sdlab.loaded() == []


def test_single_files_that_are_not_full_models(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(sdlab.UnsupportedModelError, match="LoRA"):
        sdlab.load(lora)
    vae = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(2, 2)}, str(vae))
    with pytest.raises(sdlab.UnsupportedModelError, match="no UNet weights"):
        sdlab.load(vae)
    sd3 = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x": torch.zeros(1)}, str(sd3))
    with pytest.raises(sdlab.UnsupportedModelError, match="SD3"):
        sdlab.load(sd3)
    xl = tmp_path / "xl.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(1), "conditioner.embedders.1.model.x": torch.zeros(1)}, str(xl))
    assert models.checkpoint_family(str(xl)) == "sdxl"


def test_pickle_checkpoints_are_refused_unless_allowed(clean_registry, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not even a pickle")
    with pytest.raises(sdlab.UnsafeCheckpointError, match="allow_pickle=True"):
        sdlab.load(ckpt)
    # Opting in hands the file to diffusers, which fails on this garbage with a LoadError, registering nothing.
    with pytest.raises(sdlab.LoadError):
        sdlab.load(ckpt, allow_pickle=True)
    assert sdlab.loaded() == []


def test_remote_code_is_never_loaded():
    with pytest.raises(sdlab.LoadError, match="never loads remote code"):
        sdlab.load("tiny", trust_remote_code=True)


def test_a_failed_load_registers_nothing(clean_registry, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(models, "_load_pipeline", broken)
    with pytest.raises(OSError):
        sdlab.load("tiny")
    assert sdlab.loaded() == []


def test_cuda_and_dtype_errors_say_what_to_do(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*device='auto' or 'cpu'"):
        sdlab.load("tiny", device="cuda")
    with pytest.raises(ValueError, match="float16 was asked for on the CPU.*float32"):
        sdlab.load("tiny", device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="Unknown dtype"):
        sdlab.load("tiny", dtype="float8")
    with pytest.raises(ValueError, match="Unknown device"):
        sdlab.load("tiny", device="tpu0")
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    with pytest.raises(ValueError, match="MPS is not available"):
        sdlab.load("tiny", device="mps")


@pytest.mark.parametrize("cuda, mps, device, dtype", [
    (True, True, "cuda", torch.float16),
    (False, True, "mps", torch.float32),
    (False, False, "cpu", torch.float32),
])
def test_auto_device_and_dtype(monkeypatch, cuda, mps, device, dtype):
    monkeypatch.setattr(devices, "cuda_available", lambda: cuda)
    monkeypatch.setattr(devices, "mps_available", lambda: mps)
    dev = devices.resolve_device("auto")
    assert dev.type == device
    assert devices.resolve_dtype("auto", dev) == dtype


def test_explicit_cuda_index_is_checked(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        devices.resolve_device("cuda:1")


def test_seeds_come_from_a_cpu_generator(tiny):
    g = tiny.generator(42)
    assert g.device.type == "cpu"
    assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=torch.Generator().manual_seed(42)))


@pytest.mark.gpu
def test_tiny_on_cuda_fp16_matches_cpu_noise(clean_registry):
    lab = sdlab.load("tiny", device="cuda")
    assert lab.dtype == torch.float16 and lab.device.type == "cuda"
    out = _image(lab)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


@pytest.mark.weights
def test_default_model_from_the_local_cache(real_model):
    assert real_model.family == "sd1" and real_model.kind == "hub"


def test_tiny_sdxl_is_detected_as_sdxl(clean_registry):
    lab = sdlab.load("tiny-sdxl")
    assert lab.family == "sdxl" and lab.is_tiny and type(lab.pipe).__name__ == "StableDiffusionXLPipeline"
    assert lab.pipe.text_encoder_2 is not None and lab.pipe.vae.config.scaling_factor == 0.13025
    assert sdlab.load("TINY-SDXL") is lab


def test_family_detection_from_the_unet(tiny):
    pipe = models.build_tiny_pipeline()
    assert models.detect_family(pipe) == "sd1"
    pipe.unet.register_to_config(cross_attention_dim=1024)  # OpenCLIP ViT-H width: SD 2.x
    assert models.detect_family(pipe) == "sd2"


def test_v_prediction_is_recorded(clean_registry, tiny_v_folder):
    lab = sdlab.load(tiny_v_folder)
    assert lab.prediction_type == "v_prediction"
    assert sdlab.make_scheduler(lab, "DPM++ 2M").config.prediction_type == "v_prediction"


def test_hub_id_loads_from_the_local_cache_offline(clean_registry, tiny_folder, tmp_path, monkeypatch):
    import shutil

    # the Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--sdlab-tests--tiny-sd"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    calls = _count_loads(monkeypatch)
    lab = sdlab.load("sdlab-tests/tiny-sd", cache_dir=str(tmp_path / "hub"), offline=True)
    assert lab.kind == "hub" and lab.source == "sdlab-tests/tiny-sd" and lab.family == "sd1"
    assert sdlab.load("sdlab-tests/tiny-sd", cache_dir=str(tmp_path / "hub")) is lab and len(calls) == 1
    assert torch.equal(_image(lab), _image(sdlab.load("tiny")))


@pytest.mark.parametrize("damage, match", [
    (lambda d: shutil.rmtree(d / "tokenizer"), "lacks its 'tokenizer/' subfolder"),
    (lambda d: shutil.rmtree(d / "vae"), "lacks its 'vae/' subfolder"),
    (lambda d: (d / "model_index.json").write_text("[1, 2]"), "holds a list, not the mapping"),
    (lambda d: (d / "model_index.json").write_text("{not json"), "is not valid JSON"),
    (lambda d: (d / "unet" / "config.json").write_text("{}"), "diffusers could not load the folder .*conv_in"),
])
def test_a_broken_diffusers_folder_says_what_is_broken(clean_registry, tiny_folder, tmp_path, damage, match):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_folder, folder)
    damage(folder)
    with pytest.raises(sdlab.LoadError, match=match):
        sdlab.load(str(folder))
    assert sdlab.loaded() == []
