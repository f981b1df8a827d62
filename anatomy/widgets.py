"""An attention explorer: pick a layer, a head and a query row; see its attention over the image.

In a live Jupyter front end it is an ipywidgets control panel. Everywhere
else (nbval, an HTML or PDF export, a terminal) the same object shows a
static PNG of the current choice: ``_repr_mimebundle_`` offers both, and each
front end picks what it can render.

>>> explorer(trace.attention, image, kinds, batch["image_grid_thw"], labels=["'The'", "' house'"])
"""

from __future__ import annotations

import io

import ipywidgets as widgets

from anatomy.attention_maps import AttentionRows, image_attention_figure


class Explorer:
    """Layer/head/row controls over ``image_attention_figure``; falls back to its PNG without a widget front end."""

    def __init__(self, attention: AttentionRows, image, kinds, image_grid_thw, labels: list[str] | None = None):
        self.attention, self.image, self.kinds, self.grid = attention, image, kinds, image_grid_thw
        rows = attention.probs.shape[2]
        labels = labels or [f"position {int(p)}" for p in attention.positions]
        self.layer = widgets.Dropdown(options=[("mean", None)] + [(str(x), x) for x in attention.layers], description="layer")
        self.head = widgets.Dropdown(options=[("mean", None)] + [(str(h), h) for h in attention.heads if h != "mean"],
                                     description="head")
        self.row = widgets.Dropdown(options=[("mean", None)] + list(zip(labels, range(rows))), description="token")
        self.output = widgets.Output()
        for control in (self.layer, self.head, self.row):
            control.observe(lambda _: self.redraw(), names="value")
        self.panel = widgets.VBox([widgets.HBox([self.layer, self.head, self.row]), self.output])

    def figure(self):
        """The static figure of the current choice."""
        return image_attention_figure(self.attention, self.image, self.kinds, self.grid,
                                      self.layer.value, self.head.value, self.row.value)

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


def explorer(attention: AttentionRows, image, kinds, image_grid_thw, labels: list[str] | None = None) -> Explorer:
    """An ``Explorer`` over captured attention rows (display it as a cell's last value)."""
    return Explorer(attention, image, kinds, image_grid_thw, labels)
