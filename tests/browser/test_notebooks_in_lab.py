"""The notebooks with interactive figures, as a student uses them: JupyterLab in headless Chromium.

For each notebook: run all cells, no cell shows an error; move every control of every live figure and
the figure's image changes; choosing "mean" again keeps it chosen; save, shut the kernel down, reopen:
every live figure shows as its static PNG and no cell shows a widget error. Screenshots go to
``$ANATOMY_SCREENSHOTS`` (default: pytest's temporary directory).

Run by ``make browser`` (part of ``make test``), which installs Debian's chromium and chromium-driver.
"""

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

NOTEBOOKS = {  # notebook: its live figures
    "03_pixels_to_patches.ipynb": 1,
    "04_vision_rotary_and_windows.ipynb": 1,
    "07_attention_maps.ipynb": 1,
    "10_logit_lens_and_generation.ipynb": 1,
}


def _changes(page, panel, control) -> None:
    """Move ``control`` and wait until the panel's image differs."""
    before = page.image_hash(panel)
    label = page.move(control)
    page.wait(120, f"the figure to change after moving a control to {label!r}",
              lambda: page.image_hash(panel) not in (before, None))


def _mean_again(page, panel, control) -> None:
    """Back to "mean" (the first option): it stays selected, where an option of value None emptied the dropdown."""
    before = page.image_hash(panel)
    Select(control).select_by_index(0)
    page.wait(120, "the figure to change back to the mean", lambda: page.image_hash(panel) != before)
    assert page.js("return arguments[0].selectedIndex", control) == 0
    assert Select(control).first_selected_option.text == "mean"


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_live_then_reopened(session, open_notebook, name):
    lab, _, shots = session
    stem = name.removesuffix(".ipynb")
    page = open_notebook(name)
    page.run_all()
    assert page.errors() == []
    panels = page.panels(NOTEBOOKS[name])
    assert len(panels) == NOTEBOOKS[name]
    assert page.live_figures() == [{"panel": True, "png": False}] * len(panels), page.live_figures()  # not its copy
    for panel in panels:
        for control in panel.find_elements(By.CSS_SELECTOR, "select, .noUi-target"):
            _changes(page, panel, control)
            if control.tag_name == "select":
                assert not any("Ġ" in option.text for option in Select(control).options)
                _mean_again(page, panel, control)
    page.show_figure(0)
    page.screenshot(shots / f"{stem}-live.png")
    assert page.errors() == []
    page.save()
    lab.shutdown_kernels()
    page = open_notebook(name)
    page.wait(30, "the widget manager to give up on the old widgets", lambda: page.js(
        "return ![...arguments[0].querySelectorAll('.jp-OutputArea-output')]"
        ".some(n => n.innerText === 'Loading widget...')", page.node()))
    page.show_figure(0)
    page.screenshot(shots / f"{stem}-reopened.png")
    assert page.errors() == []
    assert page.live_figures() == [{"panel": False, "png": True}] * NOTEBOOKS[name], page.live_figures()  # last PNG
