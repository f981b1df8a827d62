"""The notebooks with interactive figures, as a student uses them: JupyterLab in headless Chromium.

For each notebook: run all cells, no cell shows an error; every live figure has the controls NOTEBOOKS names, and
moving each one changes the figure's image; in the attention explorer (07) choosing "mean" again keeps it chosen;
save, shut the kernel down, reopen: every live figure shows as its static PNG and no cell shows a widget error.
Screenshots go to ``$ANATOMY_SCREENSHOTS`` (default: pytest's temporary directory); a failure's evidence
(screenshot, browser console, JupyterLab log) is named in its report.

Each notebook has ``LIMIT`` s (pytest-timeout), for a loaded 2-core machine; every wait inside has its own, shorter
deadline. Run by ``make browser`` (part of ``make test``) with the browser that ``python -m anatomy.browser`` finds.
"""

from dataclasses import dataclass

import pytest
from selenium.webdriver.support.ui import Select

LIMIT = 600  # s per notebook, its share of starting and stopping JupyterLab and Chromium included
CHANGE = 120  # s for a figure to redraw after a control moved


@dataclass(frozen=True)
class Live:
    """One live figure: its controls' labels, in order, and those of its dropdowns whose first option "mean" must
    stay chosen when chosen again (the attention explorer's rule: an option of value None emptied the dropdown)."""

    controls: tuple[str, ...]
    mean: tuple[str, ...] = ()


NOTEBOOKS = {  # notebook: its live figures, in order
    "03_pixels_to_patches.ipynb": (Live(("max_pixels",)),),
    "04_vision_rotary_and_windows.ipynb": (Live(("patch row", "patch column")),),
    "07_attention_maps.ipynb": (Live(("layer", "head", "token"), mean=("layer", "head", "token")),),
    "10_logit_lens_and_generation.ipynb": (Live(("step",)),),
    "11_your_own_picture.ipynb": (Live(("colour", "move to")),),
}


def _changes(page, panel, control, where: str) -> None:
    """Move ``control`` and wait until the panel's image differs."""
    before = page.image_hash(panel, where)
    label = page.move(control, where)
    page.wait(CHANGE, f"the figure to change after moving {where} to {label!r}",
              lambda: page.image_hash(panel, where) != before)


def _mean_again(page, panel, control, where: str) -> None:
    """Back to "mean" (the first option): the figure changes back and "mean" stays selected."""
    menu = Select(control)
    assert menu.options[0].text == "mean", f"{page.name}, {where}: first option {menu.options[0].text!r}, not 'mean'"
    before = page.image_hash(panel, where)
    menu.select_by_index(0)
    page.wait(CHANGE, f"the figure to change back to the mean ({where})",
              lambda: page.image_hash(panel, where) != before)
    chosen = page.js("return arguments[0].selectedIndex", control, what=f"the option chosen in {where}")
    assert chosen == 0 and menu.first_selected_option.text == "mean", f"{page.name}, {where}: 'mean' not kept chosen"


@pytest.mark.timeout(LIMIT)
@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_live_then_reopened(session, open_notebook, name):
    figures, stem = NOTEBOOKS[name], name.removesuffix(".ipynb")
    page = open_notebook(name)
    page.run_all()
    assert page.errors() == [], f"{name}: errors after run-all"
    panels = page.panels(len(figures))
    assert len(panels) == len(figures), f"{name}: {len(panels)} live panels, expected {len(figures)}"
    shown = page.live_figures()
    assert shown == [{"panel": True, "png": False}] * len(figures), f"{name}: live figures show {shown}"
    for index, (panel, figure) in enumerate(zip(panels, figures)):
        controls = page.controls(panel, index)
        assert tuple(controls) == figure.controls, f"{name}, figure {index}: controls {list(controls)}"
        for label, control in controls.items():
            where = f"figure {index}, control {label!r}"
            _changes(page, panel, control, where)
            if control.tag_name == "select":
                assert not any("Ġ" in option.text for option in Select(control).options), f"{name}, {where}: Ġ"
            if label in figure.mean:
                _mean_again(page, panel, control, where)
    page.show_figure(0)
    page.screenshot(session.shots / f"{stem}-live.png")
    assert page.errors() == [], f"{name}: errors after moving the controls"
    page.save()
    session.lab.shutdown_kernels()
    page = open_notebook(name)
    page.wait(30, "the widget manager to give up on the old widgets", lambda: page.js(
        "return ![...arguments[0].querySelectorAll('.jp-OutputArea-output')]"
        ".some(n => n.innerText === 'Loading widget...')", page.node(), what="'Loading widget...' outputs"))
    page.show_figure(0)
    page.screenshot(session.shots / f"{stem}-reopened.png")
    assert page.errors() == [], f"{name}: errors after reopening"
    shown = page.live_figures()
    assert shown == [{"panel": False, "png": True}] * len(figures), f"{name}: reopened, live figures show {shown}"
