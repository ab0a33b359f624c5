"""End to end: the Studio in a real JupyterLab, driven by headless Chromium through Playwright.

Uses Debian's chromium (`make browser` installs it; never a browser download). Starts JupyterLab on a
free local port with a notebook that shows two Studios on the teaching model, one built under
``plots.presentation(1.6)``, and checks what a class would see: before any run, every picture pane holds a
picture (no broken-image icon), no label is cut, and the scaled Studio's text and pictures are 1.6x; a run
changes the image across steps, reaches N/N, and its final frame, read back from the page, is one of the
teaching model's pictures with the prompt's attributes; picking DDIM after Karras says that the schedule
changed; a long run, stopped, shows the seed it used (the kernel's own), a notice in a neutral style, and
a picture (not noise) in its pane and thumbnail; no cell failed; then the kernel is restarted in the
middle of a run and a new Studio works. Screenshots before, during and after runs go to the test's
folder (and to $SDLAB_SCREENSHOT_DIR when it is set).
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
    # a class's first cell, offline (nothing cached, the hub unreachable): one sentence, no stderr block
    "import sdlab, warnings\nlab = sdlab.load()\nwarnings.simplefilter('ignore', sdlab.SdlabNotice)\n"
    "toy = sdlab.load('toy')\ntoy.pipe.set_progress_bar_config(disable=True)\nlab",
    "studio = sdlab.Studio(toy, prompt='a large red circle', steps=12, seed=3, max_fps=30)\nstudio",
    # a random seed, a word the toy does not know (a notice), and long enough to stop by hand
    "with sdlab.plots.presentation(1.6):\n    long = sdlab.Studio(toy, prompt='a blue square fox', steps=500)\nlong",
    "print('seed used', long.history[-1].settings.seed)",
]
SCALE = 1.6

# Every <img> the Studio shows has a decoded picture (a broken-image icon has naturalWidth 0).
_BROKEN_IMAGES = "c => [...c.querySelectorAll('img')].filter(i => i.offsetParent && !(i.complete && i.naturalWidth > 0)).length"
# Labels and buttons whose text does not fit (cut, or ending in an ellipsis).
_CUT_LABELS = """c => [...c.querySelectorAll('.widget-label, button, .widget-readout')]
    .filter(e => e.offsetParent && e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"""

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
    # and no "Jupyter news?" toast over the screenshots
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    # the kernel runs in tmp_path: it imports the sdlab of this tree (not whichever one is installed)
    tree = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # as a classroom: not set, and
    env = dict(env, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=path, JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
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
        _dismiss_dialog(page)
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


def _dismiss_dialog(page) -> None:
    """A dialog JupyterLab opens on its own while it settles (seen once: one that blocked every click for
    30 s) is said and accepted, so that it cannot decide the test; the test's own dialog (restart) is not
    open here."""
    import warnings

    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        warnings.warn(f"JupyterLab showed a dialog: {dialog.first.inner_text()!r:.300}; accepting it")
        dialog.first.locator("button.jp-mod-accept").click(timeout=10_000)


def _shot(page, cell, folder: Path, name: str, top: str = ".jp-OutputArea-output") -> None:
    """A screenshot of the page with this cell's ``top`` element scrolled to the top of the view."""
    cell.locator(top).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    time.sleep(0.1)
    page.screenshot(path=str(folder / name))


def _b64_picture(b64: str) -> bytes:
    import base64

    return base64.b64decode(b64)


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

    import io

    from PIL import Image

    from pictures import ROUGH, roughness

    url, folder = jupyterlab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{url}/lab/tree/e2e.ipynb")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            for k in range(3):
                _run_cell(page, cells.nth(k))
            generate = page.locator("button:has-text('Generate')")
            generate.nth(1).wait_for(timeout=120_000)

            # the first cell as a class sees it offline: the sentence saying which model and why, no stderr
            zero = cells.nth(0)
            said = zero.locator(".jp-OutputArea").inner_text()
            assert 'using the built-in teaching model ("toy") because' in said and "no connection" in said, said
            assert zero.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0, said
            _shot(page, zero, folder, "studio-first-cell-offline.png")

            first, second = cells.nth(1), cells.nth(2)
            # the controls rendered
            assert first.locator("textarea").first.input_value() == "a large red circle"
            assert first.locator("select").count() >= 2  # sampler and schedule
            assert first.get_by_text("Built-in teaching model").count() == 1

            # before any run: a picture in every pane, every label in full, the scaled Studio 1.6x
            for cell in (first, second):
                cell.locator("img.sdlab-image").wait_for()
                deadline = time.time() + 10
                while cell.evaluate(_BROKEN_IMAGES):  # (images decode asynchronously)
                    assert time.time() < deadline, "a broken-image icon before any run"
                    time.sleep(0.05)
                assert cell.locator("img").count() == 5
                assert cell.evaluate(_CUT_LABELS) == []
            font = [c.locator(".widget-label").first.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
                    for c in (first, second)]
            width = [c.locator("img.sdlab-image").evaluate("e => e.clientWidth") for c in (first, second)]
            assert font[1] / font[0] == pytest.approx(SCALE, rel=0.05), font
            assert width[1] / width[0] == pytest.approx(SCALE, rel=0.05), width
            _shot(page, first, folder, "studio-before.png")

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
            assert "step 12/12" in progress.inner_text() and "seed 3" in progress.inner_text()
            assert first.locator(".sdlab-seed-used").inner_text() == "seed used: 3"
            _shot(page, first, folder, "studio-done.png")
            _check_final_frame(image.evaluate(_IMAGE_BYTES), folder)

            # DDIM cannot follow Karras: the schedule goes back to Automatic, and the picker says so
            selects = second.locator("select")
            selects.nth(1).select_option(label="Karras")
            selects.nth(0).select_option(label="DDIM")
            _wait_text(second.locator(".sdlab-picker-note"), "DDIM cannot follow the Karras schedule", 10)
            assert selects.nth(1).evaluate("s => s.options[s.selectedIndex].textContent").startswith("Automatic")

            # a long run (random seed), stopped mid-way
            long_progress = second.locator(".sdlab-progress")
            seed_used = second.locator(".sdlab-seed-used")
            second.locator("button:has-text('Generate')").click()
            deadline = time.time() + 60
            while "step" not in long_progress.inner_text() or "step 1/" in long_progress.inner_text():
                assert time.time() < deadline, long_progress.inner_text()
                time.sleep(0.05)
            during = seed_used.inner_text()
            assert during.removeprefix("seed used: ").isdigit(), during  # the seed used, from the first step on
            assert second.evaluate(_BROKEN_IMAGES) == 0
            _shot(page, second, folder, "studio-during.png", top=".sdlab-progress")
            second.locator("button:has-text('Stop')").click()
            _wait_text(long_progress, "stopped", 60)
            stopped_at = int(long_progress.inner_text().split("step ")[1].split("/")[0])
            assert 1 < stopped_at < 500
            _run_cell(page, cells.nth(3))  # what the kernel says the run used
            used = cells.nth(3).locator(".jp-OutputArea-output").inner_text().split()[-1]
            assert seed_used.inner_text() == during == f"seed used: {used}"
            assert f"seed {used}" in long_progress.inner_text()
            assert f"seed {used}" in second.locator(".sdlab-history").inner_text()
            # the picture after Stop, and its thumbnail, are pictures (the last x0), not the noise being denoised
            frames = [_b64_picture(second.locator(selector).evaluate(_IMAGE_BYTES))
                      for selector in ("img.sdlab-image", ".sdlab-history img")]
            assert all(roughness(frame) < ROUGH for frame in frames), [roughness(f) for f in frames]
            Image.open(io.BytesIO(frames[0])).save(folder / "studio-stopped-frame.png")
            # the unknown word is a notice: said in a neutral style, not in error red
            notice = second.locator(".sdlab-notices .sdlab-notice")
            assert "fox" in notice.inner_text()
            assert notice.evaluate("e => getComputedStyle(e).color") != "rgb(187, 0, 0)"
            assert second.evaluate(_BROKEN_IMAGES) == 0 and second.evaluate(_CUT_LABELS) == []
            _shot(page, second, folder, "studio-stopped.png", top=".sdlab-progress")

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
            _shot(page, fresh, folder, "studio-after-restart.png")
        finally:
            browser.close()
            keep = os.environ.get("SDLAB_SCREENSHOT_DIR") or os.environ.get("SDLAB_KEEP_SCREENSHOTS")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                for shot in folder.glob("studio-*"):
                    shutil.copy(shot, Path(keep) / shot.name)
