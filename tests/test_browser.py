"""End to end: the Studio in a real JupyterLab, driven by headless Chromium through Playwright.

Uses Debian's chromium (`make browser` installs it; never a browser download). Starts JupyterLab on a
free local port with a notebook that shows a Studio on the teaching model and one on the tiny model,
runs it, clicks Generate, watches the image change and the progress line reach N/N, reads the final
frame back from the page and checks it is one of the teaching model's pictures with the prompt's
attributes, stops a long run, checks no cell failed, then restarts the kernel in the middle of a run and
checks that a new Studio works.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "import sdlab, warnings\nwarnings.simplefilter('ignore', sdlab.SdlabNotice)\n"
    "toy = sdlab.load('toy')\nlab = sdlab.load('tiny')\nlab.pipe.set_progress_bar_config(disable=True)\n"
    "toy.pipe.set_progress_bar_config(disable=True)",
    "studio = sdlab.Studio(toy, prompt='a large red circle', steps=12, seed=3, max_fps=30)\nstudio",
    "long = sdlab.Studio(lab, prompt='a long run', steps=150, width=256, height=256)\nlong",
]

# The bytes behind an <img> (a blob: URL that ipywidgets made), as base64.
_IMAGE_BYTES = """async (img) => {
    const blob = await (await fetch(img.src)).blob();
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let text = ""; for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text);
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed here (run `make browser`)")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "e2e.ipynb")
    port = _free_port()
    # JupyterLab 4.6 renders only the cells in view by default; the test needs every Studio in the page.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"))
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _wait_text(locator, text: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while text not in (locator.inner_text() or ""):
        if time.time() > deadline:
            raise AssertionError(f"{text!r} did not appear; last: {locator.inner_text()!r}")
        time.sleep(0.05)


def _run_cell(page, cell, timeout: float = 180.0) -> None:
    """Run one cell (Shift+Enter in it) and wait until it has finished. A keypress JupyterLab drops while
    it is still settling the kernel connection starts nothing; then press again (seen with "Run All
    Cells" too: nothing, or only the first cell, ran)."""
    prompt = cell.locator(".jp-InputPrompt")
    deadline = time.time() + timeout
    while True:
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        started = time.time()
        while "[ ]" in prompt.inner_text() and time.time() - started < 10:
            time.sleep(0.1)
        if "[ ]" not in prompt.inner_text():
            break
        assert time.time() < deadline, "JupyterLab never started the cell"
    while "*" in prompt.inner_text():
        assert time.time() < deadline, f"the cell is still running after {timeout} s"
        time.sleep(0.1)


def _check_final_frame(b64: str, folder: Path) -> None:
    """The frame the browser shows is one of the toy's pictures: a large red circle."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    import sdlab

    frame = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    frame.save(folder / "studio-final-frame.png")
    assert frame.size == (512, 512)
    toy = sdlab.load("toy")
    ds = sdlab.toy.dataset()
    index, distance = ds.nearest(toy.encode(frame)[0])
    picture = ds.images[index]
    attrs = ds.attributes[index]
    assert attrs["shape"] == "circle" and attrs["colour"] == "red" and attrs["size"] == "large", attrs
    diff = np.abs(np.asarray(frame).astype(int) - picture.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 40, (diff.mean(), np.percentile(diff, 99))  # JPEG q85


def test_studio_in_jupyterlab(jupyterlab):
    from playwright.sync_api import sync_playwright

    url, folder = jupyterlab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{url}/lab/tree/e2e.ipynb")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            for k in range(len(CELLS)):
                _run_cell(page, cells.nth(k))
            generate = page.locator("button:has-text('Generate')")
            generate.nth(1).wait_for(timeout=120_000)

            first, second = cells.nth(1), cells.nth(2)
            # the controls rendered
            assert first.locator("textarea").first.input_value() == "a large red circle"
            assert first.locator("select").count() >= 2  # sampler and schedule
            assert first.get_by_text("Built-in teaching model").count() == 1
            assert second.get_by_text("Built-in tiny model").count() == 1

            # Generate: the image changes across steps, the progress line reaches N/N
            progress = first.locator(".sdlab-progress")
            image = first.locator("img.sdlab-image")
            first.locator("button:has-text('Generate')").click()
            sources = set()
            deadline = time.time() + 60
            while "done" not in progress.inner_text():
                src = image.get_attribute("src")
                if src:
                    sources.add(src)
                assert time.time() < deadline, progress.inner_text()
                time.sleep(0.02)
            sources.add(image.get_attribute("src"))
            assert len(sources) >= 2, sources
            assert "step 12/12" in progress.inner_text()
            page.screenshot(path=str(folder / "studio-done.png"), full_page=True)
            _check_final_frame(image.evaluate(_IMAGE_BYTES), folder)

            # a longer run, stopped mid-way
            long_progress = second.locator(".sdlab-progress")
            second.locator("button:has-text('Generate')").click()
            deadline = time.time() + 60
            while "step" not in long_progress.inner_text() or "step 1/" in long_progress.inner_text():
                assert time.time() < deadline, long_progress.inner_text()
                time.sleep(0.05)
            second.locator("button:has-text('Stop')").click()
            _wait_text(long_progress, "stopped", 60)
            stopped_at = int(long_progress.inner_text().split("step ")[1].split("/")[0])
            assert 1 < stopped_at < 150
            page.screenshot(path=str(folder / "studio-stopped.png"), full_page=True)

            # no cell failed, no widget shows an error
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            assert not any("Traceback" in text or "Error" in text for text in outputs), outputs
            assert all(not t.strip() for t in page.locator(".sdlab-error").all_inner_texts())

            # the kernel restarted in the middle of a run: a new Studio works afterwards
            second.locator("button:has-text('Generate')").click()
            deadline = time.time() + 60
            while "step" not in long_progress.inner_text() or "step 1/" in long_progress.inner_text():
                assert time.time() < deadline, long_progress.inner_text()
                time.sleep(0.05)
            page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
            page.keyboard.press("Escape")
            page.keyboard.press("0")
            page.keyboard.press("0")  # JupyterLab's "restart kernel" shortcut, then its confirmation dialog
            page.locator(".jp-Dialog button.jp-mod-accept").click(timeout=30_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            time.sleep(1)
            for k in range(2):
                _run_cell(page, cells.nth(k))
            fresh = cells.nth(1)
            fresh.locator("button:has-text('Generate')").wait_for(timeout=120_000)
            fresh.locator("button:has-text('Generate')").click()
            _wait_text(fresh.locator(".sdlab-progress"), "done", 120)
            assert "step 12/12" in fresh.locator(".sdlab-progress").inner_text()
            assert not fresh.locator(".sdlab-error").inner_text().strip()
            page.screenshot(path=str(folder / "studio-after-restart.png"), full_page=True)
        finally:
            browser.close()
    if os.environ.get("SDLAB_KEEP_SCREENSHOTS"):
        for shot in folder.glob("studio-*.png"):
            shutil.copy(shot, Path(os.environ["SDLAB_KEEP_SCREENSHOTS"]) / shot.name)
