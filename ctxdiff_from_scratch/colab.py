"""Colab: the one place that holds the repository's address, and the badge and install cell every notebook carries.

Every notebook opens with an "Open in Colab" badge (in its title cell) and, as its first code cell, the install cell
below, which does nothing outside Colab. In Colab it clones the repository (code, shipped checkpoints, bundled fonts)
and installs it, then moves into its ``notebooks/`` folder so that the notebooks' relative paths
(``../data/checkpoints``) hold there as they do locally. The cell cannot import this module (it runs before the
package is installed), so it carries the address as text; ``python -m ctxdiff_from_scratch colab`` rewrites the badge
and the cell of every notebook from this module, and a test checks that they match it.
"""
from __future__ import annotations

import argparse
import json
import re
import uuid
from pathlib import Path

REPOSITORY_URL = "https://github.com/ctxdiff-from-scratch/ctxdiff-from-scratch"
BRANCH = "main"
COLAB_CLONE = "/content/ctxdiff-from-scratch"  # where the install cell clones the repository in Colab
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# any Colab badge, whatever repository or notebook it points at
BADGE_PATTERN = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^)]*\)")
INSTALL_MARKER = "# Colab only:"  # the install cell's first line starts with this


def badge_markdown(notebook: str) -> str:
    """The badge that opens ``notebooks/<notebook>`` (a file name) of this repository in Colab."""
    repository = REPOSITORY_URL.removeprefix("https://github.com/")
    return (f"[![Open In Colab]({BADGE_IMAGE})](https://colab.research.google.com/github/{repository}/blob/"
            f"{BRANCH}/notebooks/{notebook})")


def install_cell_source() -> str:
    """The first code cell of every notebook: clone and install in Colab; elsewhere do nothing at all."""
    return f'''{INSTALL_MARKER} clone the repository (code, shipped models, fonts), install it, work in its notebooks/.
# Anywhere else this cell does nothing: run the notebooks from a clone with the project's environment (README).
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    if not os.path.isdir("{COLAB_CLONE}"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "{REPOSITORY_URL}",
                        "{COLAB_CLONE}"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "{COLAB_CLONE}"], check=True)
    sys.path.insert(0, "{COLAB_CLONE}")  # the editable install is seen by new kernels only
    os.chdir("{COLAB_CLONE}/notebooks")'''


def code_source(cell: dict) -> str:
    return "".join(cell["source"])


def sync_notebook(path: Path) -> bool:
    """Rewrite a notebook's badge and install cell from this module (in place); True if anything changed.

    The install cell is the first code cell if it starts with :data:`INSTALL_MARKER`, else one is inserted before the
    first code cell. A title cell without a badge is an error: where to put it is the author's choice.
    """
    notebook = json.loads(path.read_text())
    cells = notebook["cells"]
    title = cells[0]
    text = code_source(title)
    if title["cell_type"] != "markdown" or not BADGE_PATTERN.search(text):
        raise ValueError(f"{path.name}: the first cell must be the title in markdown with a Colab badge.")
    new_title = BADGE_PATTERN.sub(lambda _: badge_markdown(path.name), text)
    first_code = next(i for i, cell in enumerate(cells) if cell["cell_type"] == "code")
    install = install_cell_source()
    changed = new_title != text
    title["source"] = new_title.splitlines(keepends=True)
    if code_source(cells[first_code]).startswith(INSTALL_MARKER):
        changed |= code_source(cells[first_code]) != install
        cells[first_code]["source"] = install.splitlines(keepends=True)
    else:
        cells.insert(first_code, {"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8],
                                  "metadata": {}, "outputs": [], "source": install.splitlines(keepends=True)})
        changed = True
    if changed:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False))  # as papermill writes it
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch colab",
                                     description=f"Write the Colab badge and install cell for {REPOSITORY_URL} into "
                                                 "every notebook (then re-execute them: make notebooks).")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    args = parser.parse_args(argv)
    for path in args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")):
        print(f"{path.name}: {'updated' if sync_notebook(path) else 'already up to date'}")
