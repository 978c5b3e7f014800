"""Packaging metadata: the conda environment lists what pyproject.toml lists, and the licence is declared in the
current (SPDX) form, so that pip builds the package without deprecation warnings.
"""
import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~ \[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_parses_and_lists_every_pyproject_requirement():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert environment["channels"] == ["conda-forge"], "conda-forge's pytorch, not the retired pytorch channel"
    conda = {requirement_name(d): d for d in environment["dependencies"] if isinstance(d, str)}
    assert "cpuonly" not in conda and "python" in conda and not any(isinstance(d, dict) for d in
                                                                      environment["dependencies"])
    project = pyproject()["project"]
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    for spec in wanted:
        name = requirement_name(spec)
        conda_name = CONDA_NAMES.get(name, name)
        assert conda_name in conda, f"environment.yml lacks {conda_name} (pyproject.toml: {spec})"
        bound = spec.strip()[len(name):]
        assert conda[conda_name].endswith(bound), f"{conda[conda_name]!r} should carry pyproject's bound {bound!r}"


def test_licence_is_an_spdx_expression_with_its_file():
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    setuptools = next(r for r in pyproject()["build-system"]["requires"] if r.startswith("setuptools"))
    assert setuptools == "setuptools>=77", "SPDX licence strings need setuptools 77"
