"""The explorer: one dropdown per argument, the figure of the current choice, a PNG without a widget front end."""

import pytest
from matplotlib.figure import Figure

from anatomy.decoder.attention import attention_rows, explorer
from anatomy.lab.widgets import Explorer


def test_controls_start_at_mean_and_drive_the_figure():
    calls = []

    def draw(layer, head):
        calls.append((layer, head))
        return Figure(figsize=(1, 1))

    panel = Explorer(draw, {"layer": [("0", 0), ("1", 1)], "head": [("3", 3)]})
    assert panel.figure() is not None and calls == [(None, None)]
    panel.controls["layer"].value = 1  # observed: redraws with the new choice
    panel.controls["head"].value = 3
    assert calls[-1] == (1, 3)
    bundle = panel._repr_mimebundle_()
    assert bundle["image/png"][:8] == b"\x89PNG\r\n\x1a\n"  # what nbval and exports show
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_an_explorer_without_choices_is_refused():
    with pytest.raises(ValueError, match="choices is empty"):
        Explorer(lambda: None, {})


def test_the_attention_explorer_offers_what_was_recorded(tiny, batch):
    rows, _ = attention_rows(tiny, batch, layers=[1, 3], heads=[0, 2], rows=[-2, -1])
    panel = explorer(rows, batch, labels=["one", "two"])
    options = {name: [value for _, value in control.options] for name, control in panel.controls.items()}
    assert options == {"layer": [None, 1, 3], "head": [None, 0, 2], "token": [None, 0, 1]}
    panel.controls["layer"].value = 3
    assert "layer 3, head mean, row mean" in panel.figure().axes[0].get_title()
