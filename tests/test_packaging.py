"""The project's own files: dependencies agree, README opens with the two commands, CI runs one of them."""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_has_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_deps = dict(_split(r) for r in project["dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and not dep.startswith(("python", "pip")):
            name, spec = _split(dep)
            conda[CONDA_NAMES.get(name, name)] = spec
    assert conda == pip_deps
    assert {"pip": ["-e ."]} in env["dependencies"]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make lab", "make test"]
    assert readme.index("```bash") < 20
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab: ", makefile, re.M) and re.search(r"^test: ", makefile, re.M)


def test_every_dependency_is_pinned_and_setup_installs_with_the_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [r for r in project["dependencies"]] + [r for r in project["optional-dependencies"]["test"]
                                                     if not r.startswith("sdlab")]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for req in wanted:
        name = re.sub(r"\[.*\]", "", _split(req)[0]).replace("_", "-")
        assert name in pins, f"{name} is a dependency but constraints.txt does not pin it"
    assert "+" not in pins["torch"]  # the same pin takes a CPU or a CUDA wheel
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line or "$(PIP)" in line]
    assert installs and all("$(PIP)" in line or "-c $(CONSTRAINTS)" in line for line in installs)


def test_the_launcher_offers_one_kernel():
    # `make lab` runs the venv's JupyterLab, whose own python3 kernel is sdlab's environment; setup
    # registers no second spec there (`make kernel` is for a JupyterLab outside the venv)
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "ipykernel install" not in recipe
    kernels = Path(sys.prefix) / "share" / "jupyter" / "kernels"
    if kernels.is_dir():
        assert sorted(p.name for p in kernels.iterdir()) == ["python3"]
