"""Live figures: what they display, that controls redraw both the panel and the static copy, bad input."""

import io

import pytest
from matplotlib.figure import Figure

from anatomy import widgets
from anatomy.tokens import token_texts


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
    slider = widgets.widgets.IntSlider(value=1, min=0, max=3)
    live = widgets.LiveFigure(_figure, {"value": slider})
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


def test_explorer_offers_mean_as_a_value_and_decoded_labels(tiny, batch, picture):
    from anatomy import attention_maps as am
    from anatomy.generation import generate_traced

    trace = generate_traced(tiny, batch, max_new_tokens=2, keep=("attention",), layers=[0, 1], heads=[0, 1],
                            reduce="none")
    kinds = am.token_kinds(tiny.config, trace.sequence)
    labels = [step.text for step in trace.steps]
    assert labels == token_texts(tiny.processor.tokenizer, trace.sequence[0, trace.prompt_length:])
    live = widgets.explorer(trace.attention, picture, kinds, batch["image_grid_thw"], labels=labels)
    for control in live.controls.values():
        assert all(value is not None for _, value in control.options)
        assert control.label == "mean"
    live.controls["layer"].value = 1
    live.controls["layer"].value = widgets.MEAN
    assert live.controls["layer"].label == "mean"
    assert [label for label, _ in live.controls["row"].options][1:] == [repr(t) for t in labels]


def test_bad_input_is_named_before_anything_is_drawn(tiny):
    with pytest.raises(ValueError, match="start=5 is not one of the budgets"):
        widgets.token_budget(start=5)
    with pytest.raises(ValueError, match="exceed the released max_pixels"):
        widgets.token_budget(budgets=(16, 32768), start=16)


def test_token_texts_are_decoded(tiny):
    tokenizer = tiny.processor.tokenizer
    ids = tokenizer(" red cross", add_special_tokens=False).input_ids
    assert token_texts(tokenizer, ids) == [" red", " cross"]
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "Ġred"  # what the labels showed before
