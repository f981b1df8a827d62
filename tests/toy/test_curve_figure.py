"""The learning-curve figure draws the shipped curve's numbers, and marks the check where it passed."""

import json

import numpy as np
import pytest

from anatomy.toy.figures import curve_figure
from anatomy.toy.weights import SHIPPED, read_curve


@pytest.fixture(scope="module")
def shipped():
    return read_curve(SHIPPED), json.loads((SHIPPED / "manifest.json").read_text())["passed_at"]


def test_every_series_is_the_curves_own(shipped):
    curve, passed_at = shipped
    top, bottom, loss = curve_figure(curve, passed_at).axes
    steps = [e["step"] for e in curve]
    expected = {kind: [e["accuracy"][kind] for e in curve] for kind in curve[0]["accuracy"]}
    expected["where, repeated shape"] = [e["where_by_case"]["shape repeated"] for e in curve]
    expected["<|im_end|> after the answer"] = [e["stops"] for e in curve]
    expected |= {f"layer {n}": [e["ratios"][n] for e in curve] for n in range(len(curve[0]["ratios"]))}
    expected["training loss"] = [e["loss"] for e in curve]
    drawn = {line.get_label(): line for axis in (top, bottom, loss) for line in axis.get_lines()
             if not line.get_label().startswith("_")}
    assert set(drawn) == set(expected)
    for label, values in expected.items():
        assert np.allclose(drawn[label].get_xdata(), steps) and np.allclose(drawn[label].get_ydata(), values)
    assert bottom.get_yscale() == "log"
    assert [tick.get_text() for tick in bottom.get_yticklabels() if tick.get_text()]  # plain numbers, no 10^0
    assert all("^" not in tick.get_text() for tick in bottom.get_yticklabels())


def test_the_passed_check_is_marked_and_named(shipped):
    curve, passed_at = shipped
    top = curve_figure(curve, passed_at).axes[0]
    marks = [line for line in top.get_lines() if line.get_label().startswith("_") and line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in marks] == [passed_at]
    assert [text.get_text() for text in top.texts] == ["check passed: cool-down"]
    live = [e for e in curve if e["step"] <= passed_at]  # a live run stops at its check: no cool-down to name
    assert [text.get_text() for text in curve_figure(live, passed_at).axes[0].texts] == ["check passed"]
    assert len(curve_figure(curve).axes[0].texts) == 0


def test_an_empty_curve_is_one_error():
    with pytest.raises(ValueError, match="at least one curve entry"):
        curve_figure([])
