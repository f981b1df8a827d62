"""Live figures: controls over a figure function, live with a kernel, a static PNG without one.

Displayed as a cell's last value, a ``LiveFigure`` writes three outputs:

1. a style output (no visible content): CSS keyed to this figure;
2. the live panel: the controls above the figure, an ``ipywidgets.Image`` redrawn on every change;
3. the static PNG of the current choice, updated in place (``update_display``) on every change.

While the panel is live, the CSS hides the static PNG. Once the kernel is gone (the notebook saved,
closed and reopened, or exported to HTML) the panel's view no longer exists, so the CSS hides the
panel's output instead ("Error displaying widget: model not found" would show otherwise) and the
static PNG of the last choice shows. Where the notebook is untrusted, JupyterLab neither renders
widgets nor applies the CSS: the panel's plain-text stand-in and the PNG show.

``dropdowns`` builds one from choices, each dropdown starting at ``"mean"`` (``None`` for the figure
function: it averages over that argument):

>>> from matplotlib.figure import Figure
>>> live = dropdowns(lambda layer, head: Figure(figsize=(1, 1)), {"layer": [("0", 0), ("1", 1)], "head": [("0", 0)]})
>>> [(name, control.options) for name, control in live.controls.items()]
[('layer', (('mean', 'mean'), ('0', 0), ('1', 1))), ('head', (('mean', 'mean'), ('0', 0)))]
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import ipywidgets as widgets
from IPython.display import HTML, Image, display
from matplotlib.figure import Figure

MEAN = "mean"  # the dropdowns' value for "averaged": never None, which ipywidgets shows as an empty choice
STANDIN = "Interactive figure: run this cell in Jupyter to use its controls; the figure of the last choice is below."


def _css(key: str) -> str:
    """Hide this style output; hide the panel unless its live view exists; hide the PNG while it does."""
    style, live, child = f".anatomy-style-{key}", f".anatomy-live-{key}", ".jp-OutputArea-child"
    return (f"<style>{child}:has({style}) {{display: none}}\n"
            f"{child}:has({style}) + {child}:not(:has({live})) {{display: none}}\n"
            f"{child}:has({style}) + {child}:has({live}) + {child} {{display: none}}</style>"
            f'<span class="anatomy-style-{key}"></span>')


class LiveFigure:
    """Named controls over ``draw(**values) -> Figure``; see the module docstring for what it displays."""

    def __init__(self, draw: Callable[..., Figure], controls: dict[str, widgets.ValueWidget], dpi: int = 80):
        if not controls:
            raise ValueError("controls is empty; expected {argument name: ipywidgets control}")
        self.draw, self.controls, self.dpi = draw, controls, dpi
        self.key = uuid.uuid4().hex[:12]
        self.image = widgets.Image(format="png")
        self.panel = widgets.VBox([widgets.HBox(list(controls.values())), self.image],
                                  layout=widgets.Layout(align_items="flex-start"))  # the figure at its own size
        self.panel.add_class(f"anatomy-live-{self.key}")
        self.static = None  # the handle of the static PNG output, once displayed
        for control in controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.redraw()

    @property
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def figure(self) -> Figure:
        """The static figure of the current choice."""
        return self.draw(**self.values)

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=self.dpi)
        return buffer.getvalue()

    def redraw(self) -> None:
        """Draw the current choice into the panel and into the static PNG output."""
        self.image.value = self.png()
        if self.static is not None:
            self.static.update(Image(data=self.image.value))

    def _ipython_display_(self) -> None:
        display(HTML(_css(self.key)))
        view = self.panel._repr_mimebundle_()
        display({**view, "text/plain": STANDIN}, raw=True)
        self.static = display(Image(data=self.image.value), display_id=True)


def dropdowns(draw: Callable[..., Figure], choices: dict[str, list[tuple[str, object]]]) -> LiveFigure:
    """One dropdown per keyword of ``draw``, first option ``"mean"`` (``draw`` receives None for it)."""
    if not choices:
        raise ValueError("choices is empty; expected {argument name: [(label, value), ...]}")
    controls = {name: widgets.Dropdown(options=[("mean", MEAN), *options], value=MEAN, description=name)
                for name, options in choices.items()}
    return LiveFigure(lambda **values: draw(**{k: None if v == MEAN else v for k, v in values.items()}), controls)
