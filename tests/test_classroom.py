"""What a class sees: notices as sentences said once, an offline start that says which model and why."""
from __future__ import annotations

import logging
import warnings

import pytest

import sdlab
from sdlab import notices


def test_notices_show_as_sentences_without_file_and_line(capsys):
    notices._showwarning(sdlab.SdlabNotice("sdlab: a notice."), sdlab.SdlabNotice, "/x/sdlab/models.py", 181)
    notices._showwarning(sdlab.SdlabWarning("sdlab: a warning."), sdlab.SdlabWarning, "/x/sdlab/models.py", 181)
    out, err = capsys.readouterr()
    assert out == "sdlab: a notice.\n" and err == "sdlab: a warning.\n"


def test_a_notice_is_said_once_per_session_and_runs_keep_theirs(toy):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        runs = [toy.generate("a red fox", steps=2, seed=1, width=64, height=64, record=False) for _ in range(3)]
    foxes = [w for w in said if "'fox'" in str(w.message)]
    assert len(foxes) == 1 and all(len(r.problems) == 1 and "'fox'" in r.problems[0] for r in runs)


def test_diffusers_truncation_line_is_dropped_in_sdlab_runs_only(lab, caplog):
    long = " ".join(["word"] * 90)
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        run = lab.generate(long, steps=1, seed=0, record=False, prompt_syntax="plain")  # (A1111's way: no cut)
    assert not [r for r in caplog.records if "truncated because CLIP" in r.getMessage()]
    assert any("dropped" in p for p in run.problems)              # sdlab says it, once, with the words
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        lab.pipe(long, num_inference_steps=1, output_type="latent")   # a plain diffusers call keeps its line
    assert [r for r in caplog.records if "truncated because CLIP" in r.getMessage()]


# (the offline start itself, one sentence on stdout and nothing on stderr, is asserted on every notebook's first
# cell by tests/test_notebooks.py, which runs them with the hub unreachable and nothing cached)
def test_hub_reachable_answers_quickly_for_a_closed_port(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert sdlab.models.hub_reachable() is False


def test_a_stopped_run_is_not_saved_with_settings_that_make_another_picture(toy, tmp_path):
    import threading

    stop = threading.Event()
    run = toy.generate("a red circle", steps=8, seed=1, width=64, height=64,
                       on_step=lambda e: stop.set() if e.record.step == 3 else None, stop=stop)
    assert run.stopped
    with pytest.raises(sdlab.InvalidArgument, match="stopped at step 3 of 8.*run.steps\\[-1\\].picture") as caught:
        run.save(tmp_path / "stopped.png")
    assert caught.value.argument == "run" and not (tmp_path / "stopped.png").exists()
    run.steps[-1].picture().save(tmp_path / "stopped.png")          # what the message offers works
