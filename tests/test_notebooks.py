"""The notebooks as committed: a Colab badge and install cell from the package's one repository address, a tagged
``parameters`` cell, no hard-coded device, executed top to bottom on a fresh kernel, and papermill overrides that
take effect. (Their outputs are checked cell by cell by strict nbval: ``make test-notebooks``.)
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctxdiff_from_scratch import colab

NOTEBOOKS = sorted(colab.NOTEBOOKS.glob("*.ipynb"))
# a device named in code rather than chosen by get_device(): "cuda", "cpu" or "mps" passed where a device goes
HARD_CODED_DEVICE = re.compile(r"""get_device\(\s*["']|torch\.device\(\s*["']|\.cuda\(\)|"""
                               r"""device\s*=\s*["'](cpu|cuda|mps)|\.to\(\s*["'](cpu|cuda|mps)|map_location""")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_every_notebook_is_checked():
    assert len(NOTEBOOKS) >= 9 and NOTEBOOKS[0].name == "00_quickstart.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_and_install_cell_come_from_the_package(path):
    notebook = load(path)
    title = "".join(notebook["cells"][0]["source"])
    assert colab.badge_markdown(path.name) in title, "run `python -m ctxdiff_from_scratch colab`"
    assert len(colab.BADGE_PATTERN.findall(title)) == 1
    assert "".join(code_cells(notebook)[0]["source"]) == colab.install_cell_source()
    assert colab.REPOSITORY_URL in colab.install_cell_source()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_tagged_parameters_cell_and_no_hard_coded_device(path):
    cells = code_cells(load(path))
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one code cell tagged `parameters` (papermill), found {tagged}"
    for cell in cells:
        source = "".join(cell["source"])
        assert not HARD_CODED_DEVICE.search(source), f"{path.name}: use get_device(), not {source[:200]!r}"
    assert any("get_device()" in "".join(cell["source"]) for cell in cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_executed_top_to_bottom_on_a_fresh_kernel(path):
    counts = [cell["execution_count"] for cell in code_cells(load(path))]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts {counts}; run `make notebooks`"


def run_install_cell(tmp_path: Path, in_colab: bool) -> list[str]:
    """Execute the install cell in a fresh interpreter (in Colab or not); -> the commands and moves it made."""
    harness = f"""
import os, subprocess, sys, types
calls = []
subprocess.run = lambda args, **kw: calls.append(" ".join(map(str, args)))
os.chdir = lambda path: calls.append("chdir " + str(path))
if {in_colab}:
    sys.modules["google.colab"] = types.ModuleType("google.colab")
path_before = list(sys.path)
exec(compile({colab.install_cell_source()!r}, "install_cell", "exec"), {{}})
if sys.path != path_before:
    calls.append("sys.path " + sys.path[0])
print("\\n".join(calls), end="")
"""
    result = subprocess.run([sys.executable, "-c", harness], cwd=tmp_path, capture_output=True, text=True,
                            check=True)
    return result.stdout.splitlines()


def test_install_cell_does_nothing_outside_colab(tmp_path):
    assert run_install_cell(tmp_path, in_colab=False) == []


def test_install_cell_in_colab_clones_installs_and_moves_into_the_notebooks(tmp_path):
    calls = run_install_cell(tmp_path, in_colab=True)
    assert calls[0] == f"git clone -q --depth 1 {colab.REPOSITORY_URL} {colab.COLAB_CLONE}"
    assert calls[1].endswith(f"-m pip install -q -e {colab.COLAB_CLONE}")
    assert calls[2:] == [f"chdir {colab.COLAB_CLONE}/notebooks", f"sys.path {colab.COLAB_CLONE}"]


def test_sync_writes_the_badge_and_install_cell_into_a_notebook(tmp_path):
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": [
        "# Title\n", "[![Open In Colab](x.svg)](https://colab.research.google.com/github/old/repo/blob/main/a.ipynb)"]},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": ["x = 1"]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "my_notebook.ipynb"
    path.write_text(json.dumps(notebook))
    assert colab.sync_notebook(path) and not colab.sync_notebook(path)  # the second run finds nothing to do
    cells = load(path)["cells"]
    assert colab.badge_markdown("my_notebook.ipynb") in "".join(cells[0]["source"]) and "old/repo" not in str(cells)
    assert ["".join(c["source"]) for c in cells[1:]] == [colab.install_cell_source(), "x = 1"]


def test_papermill_override_takes_effect(tmp_path):
    """Notebook 05 run with `-p k 2`: its printed token shapes show two context images instead of three."""
    out = tmp_path / "05_k2.ipynb"
    env = {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING", "--kernel", "python3",
                    "05_cross_attention.ipynb", str(out), "-p", "k", "2"], cwd=colab.NOTEBOOKS, env=env, check=True,
                   capture_output=True, timeout=600)
    notebook = load(out)
    injected = [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "k = 2" in "".join(injected[0]["source"])
    printed = "".join(text for cell in code_cells(notebook) for o in cell["outputs"] if o.get("name") == "stdout"
                      for text in o["text"])
    assert "visual tokens per image:     (1, 2, 64, 128)" in printed and "(1, 3, 64, 128)" not in printed
