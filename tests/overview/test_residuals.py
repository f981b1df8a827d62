"""Residual stream norms against transformers' own hidden states."""

import numpy as np
import pytest

from anatomy import run
from anatomy.overview.residuals import residual_norms_figure, stack_norms


def test_decoder_norms_are_the_hidden_states_norms(tiny, batch, reference):
    cache = run(tiny, batch, ["vision.blocks.*.output", "decoder.layers.*.output"])
    # transformers' hidden_states: the embeddings, after each layer but the last, then after the final norm
    expected = [float(h[0].norm(dim=-1).mean()) for h in reference.hidden_states[1:-1]]
    norms = stack_norms(cache, "decoder.layers")
    assert len(norms) == tiny.config.text_config.num_hidden_layers
    np.testing.assert_allclose(norms[:-1], expected, rtol=1e-6)
    vision, decoder = residual_norms_figure(cache).axes
    np.testing.assert_allclose(decoder.lines[0].get_ydata(), norms)
    assert len(vision.lines[0].get_ydata()) == tiny.config.vision_config.depth


def test_a_cache_without_residuals_is_refused(tiny, batch):
    with pytest.raises(ValueError, match="holds no vision.blocks"):
        residual_norms_figure(run(tiny, batch, "decoder.norm"))
