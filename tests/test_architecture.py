"""Imports run one way: the core never imports widgets or plotting libraries."""
from __future__ import annotations

import subprocess
import sys

CORE = ["sdlab", "sdlab.models", "sdlab.noise_schedules", "sdlab.sampler_catalog", "sdlab.generation",
        "sdlab.previews", "sdlab.infotext", "sdlab.devices", "sdlab.tiny", "sdlab.analysis"]


def test_core_imports_no_views():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE) +
            "bad = sorted(m for m in ('ipywidgets', 'matplotlib', 'IPython.display') if m in sys.modules)\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_noise_schedules_need_no_diffusers():
    code = "import sys, sdlab.noise_schedules as S; S.sigmas('karras', 5); print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
