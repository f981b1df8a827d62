"""Interactive figures: controls over a figure function, live with a kernel, a static PNG without one.

Displayed as a cell's last value, a ``LiveFigure`` writes three outputs:

1. a style output (no visible content): CSS keyed to this figure;
2. the live panel: the controls above the figure, an ``ipywidgets.Image`` redrawn on every change;
3. the static PNG of the current choice, updated in place (``update_display``) on every change.

While the panel is live, the CSS hides the static PNG. Once the kernel is gone (the notebook saved,
closed and reopened, or exported to HTML) the panel's view no longer exists, so the CSS hides the
panel's output instead ("Error displaying widget: model not found" would show otherwise) and the
static PNG of the last choice shows. Where the notebook is untrusted, JupyterLab neither renders
widgets nor applies the CSS: the panel's plain-text stand-in and the PNG show.

>>> explorer(trace.attention, image, kinds, batch["image_grid_thw"], labels=["red", " and"])
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import ipywidgets as widgets
from IPython.display import HTML, Image, display
from matplotlib.figure import Figure

from anatomy.attention_maps import AttentionRows, image_attention_figure
from anatomy.logit_lens import LensSteps, steps_figure
from anatomy.processor import MAX_PIXELS
from anatomy.resize import budget_figure
from anatomy.vision_attention import VisionAttention, patch_picker_figure

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


def _choices(values, label=str) -> list[tuple[str, object]]:
    return [("mean", MEAN)] + [(label(v), v) for v in values]


def _or_none(value):
    return None if value == MEAN else value


def explorer(attention: AttentionRows, image, kinds, image_grid_thw, labels: list[str] | None = None) -> LiveFigure:
    """Layer, head and answer-token dropdowns over ``image_attention_figure`` ("mean": averaged).

    ``labels`` name the captured rows (decoded answer tokens); by default their positions.
    """
    rows = attention.probs.shape[2]
    labels = labels or [f"position {int(p)}" for p in attention.positions]
    if len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} captured rows; expected one label per row")
    heads = [h for h in attention.heads if h != "mean"]
    controls = {
        "layer": widgets.Dropdown(options=_choices(attention.layers), value=MEAN, description="layer"),
        "head": widgets.Dropdown(options=_choices(heads), value=MEAN, description="head"),
        "row": widgets.Dropdown(options=[("mean", MEAN)] + [(repr(t), i) for i, t in enumerate(labels)],
                                value=MEAN, description="token"),
    }

    def draw(layer, head, row):
        return image_attention_figure(attention, image, kinds, image_grid_thw, _or_none(layer), _or_none(head),
                                      _or_none(row), row_label=None if row == MEAN else labels[row])

    return LiveFigure(draw, controls)


def token_budget(height: int = 1080, width: int = 1920, budgets=(4, 16, 64, 256, 1024, 4096, 16384),
                 start: int = 16384) -> LiveFigure:
    """A slider over ``max_pixels`` = tokens x 28 x 28 for an H x W image: its resized grid, tokens and memory."""
    if start not in budgets:
        raise ValueError(f"start={start} is not one of the budgets {budgets}")
    if max(budgets) * 28 * 28 > MAX_PIXELS:
        raise ValueError(f"budgets up to {max(budgets)} tokens exceed the released max_pixels ({MAX_PIXELS // 784} tokens)")
    slider = widgets.SelectionSlider(options=[(f"{b} tokens", b * 28 * 28) for b in budgets], value=start * 28 * 28,
                                     description="max_pixels", style={"description_width": "initial"},
                                     layout=widgets.Layout(width="480px"))
    return LiveFigure(lambda max_pixels: budget_figure(height, width, max_pixels), {"max_pixels": slider})


def patch_picker(maps: VisionAttention, image, window_block: int, full_block: int, row: int = 0,
                 col: int = 0) -> LiveFigure:
    """Row and column sliders over the patch grid: the patch's window, and where it looks in a window block and
    in a full-attention block (``maps`` must hold both, head mean or one head)."""
    _, rows, cols = (int(v) for v in maps.grid_thw[0])
    controls = {
        "row": widgets.IntSlider(value=row, min=0, max=rows - 1, description="patch row"),
        "col": widgets.IntSlider(value=col, min=0, max=cols - 1, description="patch column"),
    }
    return LiveFigure(lambda row, col: patch_picker_figure(maps, image, window_block, full_block, row, col), controls)


def lens_stepper(steps: LensSteps, start: int = 0) -> LiveFigure:
    """A slider over generation steps: the logit lens of the row that chose each new token."""
    count = len(steps.tokens)
    slider = widgets.IntSlider(value=start, min=0, max=count - 1, description="step")
    return LiveFigure(lambda step: steps_figure(steps, step), {"step": slider})
