"""The toy's causal figures draw what their results hold, readably: full token labels in any script, the legend off the
bars, numbers large enough to read. Each is built from a result written out by hand, so no model runs."""

import io
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from anatomy.toy.experiments import (
    Ablation,
    ImageLens,
    KnockoutResult,
    Positions,
    ablation_figure,
    knockout_figure,
    lens_figure,
    position_figure,
)
from anatomy.lab.figures import drawable
from anatomy.toy import sample
from anatomy.toy.task import QUESTION_TYPES

TOKENS = ["<|im_start|>", "system", "\n", "<|vision_start|>", "img 0,0", "<|vision_end|>", " triangles", "\uc73c"]


def _drawn(figure):
    """Render ``figure``, failing on any glyph its fonts lack."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" is a UserWarning
        figure.savefig(io.BytesIO(), format="png")
    return figure


def test_position_figure_labels_every_bar_with_its_whole_token_readably():
    effects = np.array([np.linspace(0, 0.7, len(TOKENS))])
    axis = _drawn(position_figure(Positions("decoder.layers.1.input", effects, [TOKENS], [sample(0, "test", 2)]))).axes[0]
    labels = axis.get_xticklabels()
    assert [label.get_text() for label in labels] == ["<|im_start|>", "system", "\\n", "<|vision_start|>", "img 0,0",
                                                      "<|vision_end|>", " triangles", drawable("\uc73c")]
    assert min(label.get_fontsize() for label in labels) >= 8
    assert [bar.get_height() for bar in axis.patches] == effects[0].tolist()


def test_knockout_legend_sits_beside_the_bars_not_over_them():
    conditions = ["none", "layer 0", "layer 1", "all layers"]
    accuracy = {kind: np.array([1.0, 1.0, 0.4, 0.5]) for kind in QUESTION_TYPES}
    figure = knockout_figure(KnockoutResult(conditions, accuracy, {k: np.zeros(4) for k in QUESTION_TYPES}, 24))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    assert len(legends) == 1
    legend_box = legends[0].get_window_extent(renderer)
    for axis in figure.axes:
        assert not legend_box.overlaps(axis.get_window_extent(renderer))


def test_ablation_figure_writes_each_accuracy_large_enough_to_read():
    accuracy = {kind: np.full((2, 8), 0.75) for kind in QUESTION_TYPES}
    figure = ablation_figure(Ablation(accuracy, {kind: 1.0 for kind in QUESTION_TYPES}, 24))
    numbers = [text for axis in figure.axes for text in axis.texts]
    assert len(numbers) == 3 * 16 and {t.get_text() for t in numbers} == {"0.75"}
    assert min(t.get_fontsize() for t in numbers) >= 9


def test_image_lens_writes_each_cells_token_in_any_script():
    top = np.array([[["\u63d0", " red"] * 8], [["cond", "\u306a"] * 8]])  # (layers, pictures, cells)
    figure = _drawn(lens_figure(ImageLens(top, np.array([0.1, 0.2]), [sample(0, "test", 0)])))
    written = [text.get_text().replace("\n", " ") for text in figure.axes[1].texts + figure.axes[2].texts]
    assert written[:2] == [drawable("\u63d0"), "red"] and written[-1] == drawable("\u306a")
