"""Attention against effect: the recorded attention per cell against eager attention's own weights, and the
shares against numbers worked by hand."""

import numpy as np
import pytest
import torch

from anatomy.causal import CellEffects, Contrast, agreement, answer_attention, cell_groups, pair
from anatomy.kernels import eager

pytestmark = pytest.mark.usefixtures("one_thread")


def test_answer_attention_is_eager_attentions_last_row_per_cell(tiny, painted):
    """Each pair's last prompt row, heads averaged, at each image token: the weights eager attention returns."""
    contrast = Contrast([pair(tiny, painted(), "What is it?", corrupted_image=painted(box=(0, 28, 0, 28))),
                         pair(tiny, painted(box=(28, 56, 56, 84)), "Which colour?")])  # fmt: skip
    found = answer_attention(tiny, contrast)  # (pairs, layers, rows, cols)
    assert found.shape == (2, 4, 2, 3)
    for i, p in enumerate(contrast.pairs):
        with torch.no_grad(), eager(tiny.model):
            weights = tiny.model(**p.clean, output_attentions=True).attentions  # layers x (1, heads, L, L)
        image = p.clean["input_ids"][0] == tiny.config.image_token_id
        for layer, w in enumerate(weights):
            expected = w[0, :, -1].mean(0)[image].reshape(2, 3)
            np.testing.assert_allclose(found[i, layer], expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"side='both'; expected one of"):
        answer_attention(tiny, contrast, side="both")


def effects(tiny, values, changed, direction="corrupted->clean", resolution="cell") -> CellEffects:
    """A sweep's result over a 1 x 2 grid at one site, written out by hand."""
    groups = cell_groups(tiny, (1, 2), resolution)
    return CellEffects("activation patching", "m", direction, ["decoder.layers.1.input"], groups,
                       np.array([[values]]), np.ones(1), np.zeros(1), np.array([[changed]]), [], 1, 1, 0.0)


def test_shares_worked_by_hand(tiny):
    attention = np.zeros((1, 2, 1, 2))
    attention[0, 1, 0] = [0.3, 0.1]  # layer 1: 0.3 of 0.4 on the changed cell
    noising = agreement(effects(tiny, [0.2, 1.1], [True, False]), attention, layer=1)  # moved 0.8 and -0.1 (clipped)
    assert noising.attention_share == pytest.approx([0.75]) and noising.effect_share == pytest.approx([1.0])
    assert noising.area == pytest.approx([0.5])
    denoising = agreement(effects(tiny, [0.2, 0.6], [True, False], "clean->corrupted"), attention, layer=1)
    assert denoising.effect_share == pytest.approx([0.25])  # 0.2 of 0.8


def test_agreement_refuses_what_it_cannot_compare(tiny):
    attention = np.ones((1, 2, 1, 2))
    with pytest.raises(ValueError, match=r"over 'window' groups: sweep with cells='cell'"):
        agreement(effects(tiny, [0.5], [True], resolution="window"), attention, layer=1)
    with pytest.raises(ValueError, match=r"did not patch 'decoder.layers.0.input'"):
        agreement(effects(tiny, [0.2, 0.3], [True, False]), attention, layer=0)
    with pytest.raises(ValueError, match=r"attention of shape \(1, 2, 2, 1\)"):
        agreement(effects(tiny, [0.2, 0.3], [True, False]), np.ones((1, 2, 2, 1)), layer=1)
