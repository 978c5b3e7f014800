"""Driving JupyterLab the way a reader does: open a notebook, run it from the menus, use its widgets.

Every wait is bounded and polls a small JSON snapshot of the page, so that a timeout or a failure can say what the
page showed (cell prompts, kernel status, error outputs, the widget's text) instead of only "timed out".
"""
import re
import time
from pathlib import Path

OPEN_TIMEOUT_S = 180  # page load and the first kernel start
RUN_ALL_TIMEOUT_S = 900  # notebooks take 30-90 s here; another job may share the two cores
WIDGET_TIMEOUT_S = 300  # one widget callback: a 25-step generation, or an episode figure
POLL_S = 0.5
ARTIFACTS = Path(__file__).resolve().parents[2] / "outputs" / "e2e"  # outputs/ is git-ignored
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook tab in front

# What the page shows, as JSON: the kernel's status, every code cell's prompt, error outputs and widget errors.
SNAPSHOT_JS = """(notebook) => {
  const panel = document.querySelector(notebook);
  const indicator = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const cells = panel ? [...panel.querySelectorAll('.jp-CodeCell')] : [];
  const errors = [];
  cells.forEach((cell, i) => {
    for (const out of cell.querySelectorAll('.jp-OutputArea-output')) {
      const mime = out.dataset.mimeType || '';
      const text = out.innerText || '';
      const isError = mime === 'application/vnd.jupyter.error'
        || (mime === 'application/vnd.jupyter.stderr' && /Traceback|Error/.test(text));
      if (isError) {
        errors.push(`code cell ${i + 1} (${mime}): ${text.slice(0, 2000)}`);
      }
    }
  });
  const body = document.body.innerText;
  return {
    kernel: indicator ? indicator.dataset.status : null,
    prompts: cells.map(c => c.querySelector('.jp-InputPrompt').innerText.trim()),
    errors: errors,
    widgetErrors: (body.match(/Error displaying widget[^\\n]*/g) || []),
    loading: body.includes('Loading widget...'),
  };
}"""


def snapshot(page) -> dict:
    """The page's state as SNAPSHOT_JS reports it."""
    return page.evaluate(SNAPSHOT_JS, NOTEBOOK)


def describe(state: dict) -> str:
    """A snapshot as a few lines for an assertion message."""
    return (f"kernel status: {state['kernel']}\ncode cell prompts: {' '.join(state['prompts'])}\n"
            f"error outputs: {state['errors'] or 'none'}\nwidget errors: {state['widgetErrors'] or 'none'}\n"
            f"a widget still shows 'Loading widget...': {state['loading']}")


def open_notebook(page, base_url: str, token: str, path: str) -> None:
    """Open a notebook in a fresh JupyterLab workspace and wait until its kernel has started and is idle.

    The status alone is not enough: before a kernel is attached the indicator already says 'idle' (with 'No Kernel'),
    and Run All Cells clicked then runs nothing.
    """
    page.goto(f"{base_url}/lab/tree/{path}?reset&token={token}", timeout=OPEN_TIMEOUT_S * 1000)
    page.wait_for_function("""(notebook) => {
      const panel = document.querySelector(notebook);
      const name = panel && panel.querySelector('.jp-Toolbar-kernelName');
      const indicator = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
      return name && !['', 'No Kernel'].includes(name.innerText.trim()) && indicator.dataset.status === 'idle';
    }""", arg=NOTEBOOK, timeout=OPEN_TIMEOUT_S * 1000)


def menu(page, top: str, item: str) -> None:
    """Click a command in JupyterLab's menu bar, e.g. menu(page, "Run", "Run All Cells")."""
    page.get_by_role("menuitem", name=top, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def wait_for(page, ready, timeout_s: float, what: str, detail=lambda: "") -> dict:
    """Poll the page's snapshot until `ready(snapshot)`; fail, saying what the page shows, on timeout or an error.

    `detail()` adds a line to the failure message (e.g. the widget's text).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        state = snapshot(page)
        if ready(state):
            return state
        if state["errors"] or time.monotonic() > deadline:
            why = "an error output appeared" if state["errors"] else f"not within {timeout_s} s"
            raise AssertionError(f"{what}: {why}\n{detail()}{describe(state)}")
        time.sleep(POLL_S)


def run_all_cells(page) -> None:
    """Clear the committed outputs, run every cell from the Run menu, wait until each code cell has a count.

    Clearing first matters: the committed notebook already shows execution counts, which would end the wait at once.
    A fresh kernel numbers the cells 1, 2, ...: the counts must rise, one per code cell.
    """
    menu(page, "Edit", "Clear Outputs of All Cells")
    menu(page, "Run", "Run All Cells")
    wait_for(page, lambda s: any(p != "[ ]:" for p in s["prompts"]), 60, "Run All Cells started no cell")
    state = wait_for(page, lambda s: s["kernel"] == "idle" and not s["loading"]
                     and all(p[1:-2].isdigit() for p in s["prompts"]), RUN_ALL_TIMEOUT_S, "Run All Cells")
    counts = [int(p[1:-2]) for p in state["prompts"]]
    assert counts == sorted(set(counts)), f"Run All Cells did not run the cells once each, in order\n{describe(state)}"


def assert_no_errors(page) -> None:
    """No cell shows an error output and nothing on the page says 'Error displaying widget' (once widgets load)."""
    state = wait_for(page, lambda s: not s["loading"], WIDGET_TIMEOUT_S, "widgets still 'Loading widget...'")
    assert not state["errors"] and not state["widgetErrors"], f"the notebook shows errors\n{describe(state)}"


def widget_cell(page, marker: str):
    """The code cell whose output holds a widget matching the CSS selector `marker`."""
    cell = page.locator(f"{NOTEBOOK} .jp-CodeCell", has=page.locator(marker))
    cell.first.wait_for(timeout=WIDGET_TIMEOUT_S * 1000)
    return cell.first


def output_image(cell) -> str:
    """The src (a data: URL of the PNG) of the last image in the cell's widget Output area; '' while there is none.

    The last one is the generated image in notebook 00's panel (shown on its own, after the query and context), and
    the episode figure in notebook 01's browser: comparing data URLs compares their pixels exactly.
    """
    return cell.evaluate("c => [...c.querySelectorAll('.widget-output img')].pop()?.getAttribute('src') || ''")


def output_text(cell) -> str:
    """The text of the cell's widget Output area (what the callback printed)."""
    return cell.evaluate("c => c.querySelector('.widget-output')?.innerText || ''")


def wait_for_new_image(page, cell, old_src: str, expect_text: str = "") -> str:
    """Wait until the widget's output image differs from `old_src` and its text shows `expect_text`, kernel idle."""
    def updated(state: dict) -> bool:
        new_image = output_image(cell) not in ("", old_src)
        return state["kernel"] == "idle" and new_image and expect_text in output_text(cell)

    wait_for(page, updated, WIDGET_TIMEOUT_S,
             f"the widget's output image did not change (expected text {expect_text!r})",
             detail=lambda: f"the widget's output shows: {output_text(cell)!r}\n")
    return output_image(cell)


def control(cell, kind: str, label: str):
    """The widget of CSS class `kind` (widget-slider, widget-dropdown, ...) whose description label is `label`."""
    name = cell.page.locator("label.widget-label", has_text=re.compile(f"^{re.escape(label)}$"))
    return cell.locator(f".{kind}", has=name).first


def save_screenshot(cell, name: str) -> None:
    """A screenshot of the cell's outputs (the widget panel) to outputs/e2e/<name>."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cell.locator(".jp-Cell-outputArea").screenshot(path=ARTIFACTS / name)
