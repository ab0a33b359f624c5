"""Every notebook runs top to bottom as a classroom runs it: offline (no model in the cache, the hub
unreachable), on the teaching model sdlab then picks.

Each notebook checks its own figures and results with asserts in its cells, so a notebook that runs
but draws the wrong thing fails here too. What the class sees is checked as well: no cell writes to
stderr (no warning with its file and line, no stack of progress bars, no "Couldn't connect to the Hub"),
and the first cell says in one sentence which model is used and why.
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no numbered notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)          # a classroom does not set it:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")      # the hub cannot be reached,
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))     # and nothing is cached
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("SDLAB_MODEL", raising=False)
    monkeypatch.setenv("SDLAB_OUTPUT_DIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} is committed with outputs; clear them"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    code = [c for c in nb.cells if c.cell_type == "code"]
    stderr = [(k, o.text) for k, c in enumerate(code) for o in c.outputs
              if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{path.name}: cells write to stderr: {stderr}"
    first = "".join(o.text for o in code[0].outputs if o.output_type == "stream")
    assert first.startswith('sdlab: using the built-in teaching model ("toy") because') and \
        "no connection to the Hugging Face hub" in first and first.count("\n") == 1, first
    _check_key_figure(path, code)


def _check_key_figure(path: Path, code: list) -> None:
    """The cell tagged "key-figure" (what the lesson is about) shows a picture, and not a blank one: most of
    its pixels are not the background, in more than a few colours. Kept in $SDLAB_SCREENSHOT_DIR if set."""
    from PIL import Image

    keys = [c for c in code if "key-figure" in c.metadata.get("tags", [])]
    assert len(keys) == 1, f"{path.name}: tag exactly one cell 'key-figure'"
    pngs = [o.data["image/png"] for o in keys[0].outputs if o.output_type in ("display_data", "execute_result")
            and "image/png" in o.data]
    assert pngs, f"{path.name}: the key figure's cell shows no picture"
    image = Image.open(io.BytesIO(base64.b64decode(pngs[-1]))).convert("RGB")
    pixels = np.asarray(image).reshape(-1, 3)
    background = np.median(pixels, axis=0)
    drawn = np.abs(pixels.astype(int) - background).sum(axis=1) > 60
    assert image.width >= 300 and 0.02 < drawn.mean(), f"{path.name}: the key figure is (nearly) blank"
    assert len(np.unique(pixels[drawn] // 32, axis=0)) >= 4, f"{path.name}: the key figure has too few colours"
    folder = os.environ.get("SDLAB_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        image.save(Path(folder) / f"{path.stem}.png")
