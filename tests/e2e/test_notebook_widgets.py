"""The notebooks' widgets in a real browser: JupyterLab runs the notebook, Chromium clicks its controls.

nbval checks the committed outputs; this checks what nbval cannot: that the widgets render in JupyterLab and that a
reader's click or key press reaches the kernel and comes back as a new image. Screenshots go to outputs/e2e/.
"""
from lab_driver import (assert_no_errors, control, open_notebook, run_all_cells, save_screenshot,
                        wait_for_new_image, widget_cell)


def test_quickstart_widget_panel(page, jupyter_lab):
    """00_quickstart's panel: dropping a gallery image from the context, then lowering k, each changes the generated
    image (its pixels, not just the figure of the query and context beside it)."""
    base_url, token, _ = jupyter_lab
    open_notebook(page, base_url, token, "notebooks/00_quickstart.ipynb")
    run_all_cells(page)
    assert_no_errors(page)
    panel = widget_cell(page, ".widget-toggle-button")
    before = wait_for_new_image(page, panel, "", "k = 3,")  # the panel generates once when it is displayed
    save_screenshot(panel, "quickstart_panel_before.png")

    panel.get_by_role("button", name="1", exact=True).click()  # context: gallery images [0, 1, 2] -> [0, 2]
    after_context = wait_for_new_image(page, panel, before, "k = 2,")
    save_screenshot(panel, "quickstart_panel_after_context.png")

    control(panel, "widget-slider", "k").get_by_role("slider").press("Home")  # the k slider to its minimum, 1
    wait_for_new_image(page, panel, after_context, "k = 1,")
    save_screenshot(panel, "quickstart_panel_after_k.png")
    assert_no_errors(page)


def test_episode_browser(page, jupyter_lab):
    """01_data_worlds' episode browser: choosing another task shows another episode."""
    base_url, token, _ = jupyter_lab
    open_notebook(page, base_url, token, "notebooks/01_data_worlds.ipynb")
    run_all_cells(page)
    assert_no_errors(page)
    browser_cell = widget_cell(page, ".widget-interact")
    before = wait_for_new_image(page, browser_cell, "")
    save_screenshot(browser_cell, "episode_browser_before.png")

    control(browser_cell, "widget-dropdown", "task").locator("select").select_option("seg2img")
    wait_for_new_image(page, browser_cell, before)
    save_screenshot(browser_cell, "episode_browser_after.png")
    assert_no_errors(page)
