"""An explorer: dropdowns over the arguments of a figure function, and the figure of the current choice.

In a live Jupyter front end it is an ipywidgets control panel. Everywhere
else (nbval, an HTML or PDF export, a terminal) the same object shows a
static PNG of the current choice: ``_repr_mimebundle_`` offers both, and each
front end picks what it can render. Every control starts at ``"mean"``
(``None``: the figure function averages over that argument).

>>> from matplotlib.figure import Figure
>>> panel = Explorer(lambda layer, head: Figure(), {"layer": [("0", 0), ("1", 1)], "head": [("0", 0)]})
>>> [(name, control.options) for name, control in panel.controls.items()]
[('layer', (('mean', None), ('0', 0), ('1', 1))), ('head', (('mean', None), ('0', 0)))]
"""

from __future__ import annotations

import io
from collections.abc import Callable

import ipywidgets as widgets


class Explorer:
    """One dropdown per keyword of ``draw`` (first option ``"mean"`` = ``None``); falls back to a PNG."""

    def __init__(self, draw: Callable, choices: dict[str, list[tuple[str, object]]]):
        if not choices:
            raise ValueError("choices is empty; expected {argument name: [(label, value), ...]}")
        self.draw = draw
        self.controls = {
            name: widgets.Dropdown(options=[("mean", None), *options], description=name)
            for name, options in choices.items()
        }
        self.output = widgets.Output()
        for control in self.controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.panel = widgets.VBox([widgets.HBox(list(self.controls.values())), self.output])

    def figure(self):
        """The static figure of the current choice."""
        return self.draw(*(control.value for control in self.controls.values()))

    def redraw(self) -> None:
        """Draw the current choice into the panel's output area."""
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display

            display(self.figure())

    def _repr_mimebundle_(self, include=None, exclude=None):
        self.redraw()
        bundle = self.panel._repr_mimebundle_(include=include, exclude=exclude) or {}
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=80)
        return {**bundle, "image/png": buffer.getvalue()}
