"""Live figures: what they display, that controls redraw the panel and the static copy, the explorers, bad input."""

import io

import pytest
from matplotlib.figure import Figure

from anatomy.decoder.attention import attention_rows, explorer
from anatomy.decoder.generation import generate_traced
from anatomy.lab import widgets
from anatomy.processor import token_texts
from anatomy.vision.resize import budget_slider


def _figure(value) -> Figure:
    figure = Figure(figsize=(2, 1))
    figure.subplots().set_title(str(value))
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


@pytest.fixture
def shown(monkeypatch):
    """Every display() call of the widgets module, with a handle that records updates."""
    calls = []

    class Handle:
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    def display(obj, raw=False, display_id=None):
        calls.append(obj)
        return Handle() if display_id else None

    monkeypatch.setattr(widgets, "display", display)
    return calls


def test_three_outputs_style_live_panel_static_png(shown):
    live = widgets.LiveFigure(_figure, {"value": widgets.widgets.IntSlider(value=1, min=0, max=3)})
    live._ipython_display_()
    style, panel, static = shown
    assert f"anatomy-style-{live.key}" in style.data and f"anatomy-live-{live.key}" in style.data
    assert panel["application/vnd.jupyter.widget-view+json"]["model_id"] == live.panel.model_id
    assert panel["text/plain"] == widgets.STANDIN
    assert f"anatomy-live-{live.key}" in live.panel._dom_classes
    assert static.data == _png(_figure(1)) == live.image.value


def test_a_control_redraws_the_panel_and_the_static_copy(shown):
    slider = widgets.widgets.IntSlider(value=1, min=0, max=3)
    live = widgets.LiveFigure(_figure, {"value": slider})
    live._ipython_display_()
    slider.value = 2
    assert live.image.value == _png(_figure(2)) != _png(_figure(1))
    assert [update.data for update in live.static.updates] == [_png(_figure(2))]


def test_dropdowns_start_at_mean_which_the_figure_receives_as_none():
    calls = []

    def draw(layer, head):
        calls.append((layer, head))
        return Figure(figsize=(1, 1))

    live = widgets.dropdowns(draw, {"layer": [("0", 0), ("1", 1)], "head": [("3", 3)]})
    assert calls == [(None, None)]
    live.controls["layer"].value = 1
    live.controls["head"].value = 3
    live.controls["layer"].value = widgets.MEAN  # back to the mean: still a real option, so still shown
    assert calls[-3:] == [(1, None), (1, 3), (None, 3)]
    assert live.controls["layer"].label == "mean"
    assert all(value is not None for control in live.controls.values() for _, value in control.options)


def test_nothing_to_control_is_refused():
    with pytest.raises(ValueError, match="choices is empty"):
        widgets.dropdowns(lambda: None, {})
    with pytest.raises(ValueError, match="controls is empty"):
        widgets.LiveFigure(lambda: None, {})


def test_the_attention_explorer_offers_what_was_recorded(tiny, batch):
    rows, _ = attention_rows(tiny, batch, layers=[1, 3], heads=[0, 2], rows=[-2, -1])
    panel = explorer(rows, batch, labels=["one", "two"])
    options = {name: [value for _, value in control.options] for name, control in panel.controls.items()}
    assert options == {"layer": ["mean", 1, 3], "head": ["mean", 0, 2], "token": ["mean", 0, 1]}
    panel.controls["layer"].value = 3
    panel.controls["token"].value = 1
    assert "layer 3, head mean, token 'two'" in panel.figure().axes[1].get_title()  # beside the picture


def test_the_explorer_labels_answer_tokens_decoded(tiny, batch):
    trace = generate_traced(tiny, batch, max_new_tokens=2, keep=("attention",), layers=[0], heads=[0])
    labels = [step.text for step in trace.steps]
    assert labels == token_texts(tiny.processor.tokenizer, trace.sequence[0, trace.prompt_length:])
    panel = explorer(trace.attention, batch, labels=labels)
    assert [label for label, _ in panel.controls["token"].options][1:] == [repr(t) for t in labels]
    with pytest.raises(ValueError, match="1 labels for 2 captured rows"):
        explorer(trace.attention, batch, labels=labels[:1])


def test_the_budget_slider_refuses_a_start_or_budget_it_cannot_show():
    with pytest.raises(ValueError, match="start=5 is not one of the budgets"):
        budget_slider(start=5)
    with pytest.raises(ValueError, match="exceed the released max_pixels"):
        budget_slider(budgets=(16, 32768), start=16)
