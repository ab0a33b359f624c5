"""Plots contain what they claim: lines, labels, grid shapes, and values from the core."""
from __future__ import annotations

import numpy as np
import pytest
from pathlib import Path
from PIL import Image

import sdlab
from sdlab import noise_schedules as S
from sdlab import plots
from sdlab.analysis import steps_per_band


def test_schedule_plot_has_one_line_per_type_with_the_core_values(lab):
    drawn = plots.plot_schedules(["uniform", "karras", "exponential"], n=10, model=lab, rho=5.0)
    assert list(drawn.artists) == ["uniform", "karras", "exponential"]
    assert [t.get_text() for t in drawn.ax.get_legend().get_texts()] == ["Uniform", "Karras", "Exponential"]
    training = S.TrainingSchedule.from_config(lab.default_scheduler.config)
    assert drawn.artists["karras"].get_ydata() == pytest.approx(
        S.karras(10, training.sigma_min, training.sigma_max, rho=5.0))
    assert len(drawn.artists["uniform"].get_xdata()) == 11
    assert drawn._repr_png_()[:4] == b"\x89PNG"


@pytest.mark.parametrize("y", ["log_sigma", "timestep", "snr", "log_snr"])
def test_schedule_plot_other_axes_drop_the_final_zero(y):
    drawn = plots.plot_schedules(["karras"], n=8, y=y)
    line = drawn.artists["karras"]
    assert len(line.get_xdata()) == 8 and np.all(np.isfinite(line.get_ydata()))
    if y == "timestep":
        assert line.get_ydata()[0] == pytest.approx(999, abs=0.01)


def test_plan_plot_shows_the_scheduler_beside_the_formula(lab):
    s = sdlab.make_scheduler(lab, "Euler", "karras")
    drawn = plots.plot_plan(s, 12)
    assert set(drawn.artists) == {"scheduler", "formula"}
    assert drawn.artists["scheduler"].get_ydata() == pytest.approx(drawn.artists["formula"].get_ydata(), rel=1e-5)
    assert "12 UNet calls" in drawn.ax.get_title()


def test_step_allocation_counts_steps_per_band():
    drawn = plots.plot_step_allocation(["karras", "uniform"], n=20)
    heights = [b.get_height() for b in drawn.artists["karras"]]
    assert heights == steps_per_band(S.sigmas("karras", 20)) and sum(heights) == 20


def test_run_plot(lab):
    run = lab.generate("x", steps=5, seed=1, sampler="Euler")
    drawn = plots.plot_run(run)
    assert len(drawn.axes) == 3
    assert drawn.artists["sigma"].get_ydata() == pytest.approx([r.sigma for r in run.steps])
    assert np.isnan(drawn.artists["x0_change"].get_ydata()[0])


def test_step_grid_rows_are_runs_columns_are_steps(lab):
    runs = [lab.generate("x", steps=6, seed=2, sampler=s) for s in ("Euler", "Heun", "PLMS")]
    drawn = plots.step_grid(runs, [1, 3, 6])
    images = drawn.artists["images"]
    assert len(images) == 3 and all(len(row) == 3 for row in images)
    assert [ax.get_title() for ax in drawn.axes[:3]] == ["step 1", "step 3", "step 6"]
    assert drawn.artists["labels"][1].startswith("Heun") and "NFE 11" in drawn.artists["labels"][1]
    # the cell is the approx decode of the record that completed that step
    heun_step3 = [r for r in runs[1].steps if r.step == 3][-1]
    expected = sdlab.previews.approx_rgb(heun_step3.x0.float(), "sd1")
    assert (images[1][1].get_array() == expected).all()


def test_sweep_checks_cells_and_xy_plot_labels_them(lab):
    sw = sdlab.sweep(lab, prompt="x", seed=3, steps=4, x="sampler", x_values=["Euler", "DPM++ 2M"],
                     y="cfg", y_values=[1.0, 7.0])
    assert sw.shape == (2, 2)
    assert sw.runs[1][0].settings.cfg == 7.0 and sw.runs[0][1].scheduler_report["sampler"] == "DPM++ 2M"
    assert all(r.settings.seed == 3 for row in sw.runs for r in row)
    drawn = plots.xy_plot(sw)
    assert drawn.artists["titles"][0][1] == "DPM++ 2M / karras, NFE 4"
    # headers: the x values on top, the y values on the left; each cell only what differs (its schedule)
    assert [ax.get_title() for ax in drawn.axes[:2]] == ["sampler = Euler", "sampler = DPM++ 2M"]
    assert drawn.axes[2].get_ylabel() == "cfg = 7" and drawn.axes[1].get_xlabel() == "Karras / NFE 4"
    assert len([im for row in drawn.artists["images"] for im in row if im is not None]) == 4
    with pytest.raises(ValueError, match="The cell sampler='DDIM', schedule='karras' .x_values, y_values. cannot run"):
        sdlab.sweep(lab, x="sampler", x_values=["DDIM"], y="schedule", y_values=["karras"], steps=2)
    partial = sdlab.sweep(lab, x="sampler", x_values=["DDIM", "Euler"], y="schedule", y_values=["karras"],
                          steps=2, skip_invalid=True)
    assert partial.runs[0][0] is None and partial.runs[0][1] is not None and (0, 0) in partial.errors
    assert plots.xy_plot(partial).artists["titles"][0][0] == "n/a"


def test_animations(lab, tmp_path):
    run = lab.generate("x", steps=5, seed=1, sampler="Euler")
    gif = plots.animate_run(run, tmp_path / "run.gif")
    with Image.open(gif) as img:
        assert img.n_frames == 5 and img.size[0] >= 64
    # a notebook cell shows the animation itself: the GIF's own bytes inline
    import base64
    html = gif._repr_html_()
    assert isinstance(gif, Path) and base64.b64decode(html.split("base64,")[1].split('"')[0]) == gif.read_bytes()
    mp4 = plots.animate_run(run, tmp_path / "run.mp4")
    assert mp4.stat().st_size > 0 and mp4.read_bytes()[4:8] == b"ftyp" and "<video" in mp4._repr_html_()
    with pytest.raises(ValueError, match=".gif or .mp4"):
        plots.animate_run(run, tmp_path / "run.avi")


def test_schedule_explorer_updates_in_place(lab):
    explorer = sdlab.ScheduleExplorer(lab, names=["karras", "uniform"], n=10)
    first = explorer.image.value
    line = explorer.lines["karras"]
    explorer.rho.value = 3.0
    assert explorer.lines["karras"] is line  # the same artist, mutated
    training = explorer.training
    assert line.get_ydata() == pytest.approx(S.karras(10, training.sigma_min, training.sigma_max, rho=3.0))
    assert explorer.image.value != first
    explorer.n.value = 15
    assert len(line.get_xdata()) == 16
    explorer.names.value = ("uniform",)
    assert not line.get_visible() and explorer.lines["uniform"].get_visible()
    explorer.y.value = "log_snr"
    assert len(explorer.lines["uniform"].get_ydata()) == 15


def test_cfg_sweep(lab):
    drawn = plots.cfg_sweep(lab, [1.0, 5.0, 9.0], prompt="x", seed=4, steps=3, sampler="Euler")
    sweep = drawn.artists["sweep"]
    assert sweep.shape == (1, 3) and [r.settings.cfg for r in sweep.runs[0]] == [1.0, 5.0, 9.0]
    assert [ax.get_title() for ax in drawn.axes] == ["cfg = 1", "cfg = 5", "cfg = 9"]
    # what the headers do not say (the sampler and schedule it resolved to, its NFE) is the same for every
    # cell here, so it is said once, over the grid
    assert drawn.figure.get_suptitle() == "Euler / Uniform / NFE 3" and {ax.get_xlabel() for ax in drawn.axes} == {""}


def test_presentation_scale_enlarges_text_and_restores():
    base = plots.plot_schedules(["karras"], n=5).ax.title.get_fontsize()
    with plots.presentation(2.0) as p:
        assert plots.presentation_scale() == p.scale == 2.0
        assert plots.plot_schedules(["karras"], n=5).ax.title.get_fontsize() == 2 * base
    assert plots.presentation_scale() == 1.0
    assert plots.plot_schedules(["karras"], n=5).ax.title.get_fontsize() == base


def test_step_axes_have_whole_ticks(lab):
    drawn = plots.plot_schedules(["karras"], n=3)      # matplotlib alone ticks 0.5, 1.5, 2.5 here
    assert all(float(t).is_integer() for t in drawn.ax.get_xticks())
