"""Knockout and head sweeps, each against unbatched runs: one ``intervene`` forward per (layer, group) or
(layer, head), and for mean and patch ablation a hand-written hook that writes the head's slice of ``o_proj``'s
input."""

import contextlib

import numpy as np
import pytest
import torch

from anatomy.causal import Contrast, intervene, knock_out, logit_diff, pair, zero
from anatomy.causal.heads import head_sweep, heads_figure
from anatomy.causal.knockouts import knockout_figure, knockout_sweep
from anatomy.causal.metrics import measure
from anatomy.inputs import demo_image
from anatomy.model import decoder_layers

QUESTION = "What colour is the house?"
LONGER = "Is the house red, or is the house blue?"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def contrast(tiny):
    """Two pairs of two layouts; the second asks a longer question of the corrupted picture (text by counterpart)."""
    clean = np.array(demo_image(56, 84))
    corrupted = clean.copy()
    corrupted[:, 28:] = 0
    return Contrast([pair(tiny, clean, QUESTION, corrupted_image=corrupted),
                     pair(tiny, clean, QUESTION, corrupted_image=corrupted, corrupted_question=LONGER)])  # fmt: skip


@pytest.fixture(scope="module")
def ld(tiny):
    return logit_diff(tiny, "red", "blue")


def metric_of(spec, metric, prompt, row: int) -> float:
    """The metric of one prompt run alone (pair ``row``'s answers)."""
    return float(measure(spec, prompt, metric, [row])[0][0])


def edited(spec, metric, prompt, row: int, edits) -> float:
    with intervene(spec, edits):
        return metric_of(spec, metric, prompt, row)


@contextlib.contextmanager
def heads_kept(spec, layer: int):
    """Keep one run's input of ``o_proj`` at ``layer``: ``{"heads": (1, L, heads * head_dim)}``."""
    kept = {}
    handle = decoder_layers(spec)[layer].self_attn.o_proj.register_forward_pre_hook(
        lambda module, args: kept.update(heads=args[0].detach().clone()))
    try:
        yield kept
    finally:
        handle.remove()


@contextlib.contextmanager
def head_written(spec, layer: int, head: int, values: torch.Tensor):
    """``o_proj``'s input at ``layer`` with head ``head``'s slice replaced by ``values`` ``(L, head_dim)``."""
    heads = spec.config.text_config.num_attention_heads

    def write(module, args):
        written = args[0].clone()
        written.view(*written.shape[:-1], heads, -1)[0, :, head] = values
        return (written,)

    handle = decoder_layers(spec)[layer].self_attn.o_proj.register_forward_pre_hook(write)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("cells", ["image", "cell"])
def test_knockout_sweep_equals_one_unbatched_knockout_per_copy(tiny, contrast, ld, cells):
    result = knockout_sweep(tiny, contrast, ld, cells=cells, budget_gib=0.006)
    assert result.values.shape == (2, 4, 1 if cells == "image" else 6) and result.layers == [0, 1, 2, 3]
    for p, one in enumerate(contrast.pairs):
        assert result.clean[p] == pytest.approx(metric_of(tiny, ld, one.clean, p), abs=1e-5)
        assert result.corrupted[p] == pytest.approx(metric_of(tiny, ld, one.corrupted, p), abs=1e-5)
        for layer in result.layers:
            for g, group in enumerate(result.groups.members):
                knock = knock_out([layer], queries=[-1], keys="image", cells=None if cells == "image" else group)
                assert result.values[p, layer, g] == pytest.approx(edited(tiny, ld, one.clean, p, [knock]), abs=1e-4)
    scale = (result.clean - result.corrupted)[:, None, None]
    np.testing.assert_allclose(result.effects, (result.values - result.corrupted[:, None, None]) / scale)
    figure = knockout_figure(result, pair=1)
    if cells == "image":  # one line: the effect per layer
        np.testing.assert_allclose(figure.axes[0].lines[0].get_ydata(), result.effects[1, :, 0])
    else:  # one panel per layer, what each group lost
        assert [axis.get_title() for axis in figure.axes[:4]] == [f"layer {layer}" for layer in range(4)]


def test_zero_ablation_equals_one_unbatched_zero_edit_per_head(tiny, contrast, ld):
    result = head_sweep(tiny, contrast, ld, layers=[0, 3], budget_gib=0.004)
    assert result.values.shape == (2, 2, 4) and 1 < result.batch_size < 8
    for p, one in enumerate(contrast.pairs):
        for i, layer in enumerate([0, 3]):
            for head in range(4):
                reference = edited(tiny, ld, one.clean, p, [zero(f"decoder.layers.{layer}.self_attn", heads=[head])])
                assert result.values[p, i, head] == pytest.approx(reference, abs=1e-4)
    shown = heads_figure(result, pair=0).axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, 1 - result.effects[0])


@pytest.mark.parametrize("ablation", ["mean", "patch"])
def test_mean_and_patch_ablation_equal_a_hand_written_head_per_copy(tiny, contrast, ld, ablation):
    result = head_sweep(tiny, contrast, ld, layers=[1, 2], ablation=ablation, budget_gib=0.004)
    heads = tiny.config.text_config.num_attention_heads
    for p, one in enumerate(contrast.pairs):
        for i, layer in enumerate([1, 2]):
            with heads_kept(tiny, layer) as corrupted, torch.no_grad():
                tiny.model(**one.corrupted)
            with heads_kept(tiny, layer) as clean, torch.no_grad():
                tiny.model(**one.clean)
            source = corrupted["heads"][0].view(-1, heads, clean["heads"].shape[-1] // heads)  # (L_corrupted, h, d)
            own = clean["heads"][0].view(-1, *source.shape[1:])  # (L_clean, heads, head_dim)
            for head in range(heads):
                if ablation == "mean":
                    values = source[:, head].mean(0).expand(len(own), -1)
                else:  # each clean position takes its counterpart's value, or keeps its own
                    where = one.counterpart
                    values = torch.where((where >= 0)[:, None], source[where.clamp(min=0), head], own[:, head])
                with head_written(tiny, layer, head, values):
                    reference = metric_of(tiny, ld, one.clean, p)
                assert result.values[p, i, head] == pytest.approx(reference, abs=1e-4)


def test_bad_input_is_refused_before_the_model_runs(tiny, contrast, ld):
    with pytest.raises(ValueError, match="ablation='half'"):
        head_sweep(tiny, contrast, ld, ablation="half")
    with pytest.raises(ValueError, match="layer"):
        knockout_sweep(tiny, contrast, ld, layers=[7])
    with pytest.raises(MemoryError, match="knock out fewer layers"):
        knockout_sweep(tiny, contrast, ld, budget_gib=1e-4)
