"""Probes on the user's own prompts, each against a reference: transformers' hidden states and image features, a
plain forward hook, numpy's least squares, the same probe run on the control model alone, the pixels painted."""

import numpy as np
import pytest
import torch
from transformers.vision_utils import get_vision_window_index

import anatomy
from anatomy.causal import probe
from anatomy.causal.probes import features, ridge_accuracy
from anatomy.inputs import encode
from anatomy.model import multimodal, vision_blocks

pytestmark = pytest.mark.usefixtures("one_thread")

SITES = ["vision.blocks.1.output", "vision.merger.output", "decoder.layers.0.output", "decoder.layers.2.output"]


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def prompts(tiny, painted):
    """Pictures of two sizes, 2 x 3 cells and 4 x 3 cells, the first one twice (so that two prompts share a batch)."""
    return [encode(tiny, painted(), "What is it?"), encode(tiny, painted(112, 84), "What is it?"),
            encode(tiny, painted(box=(0, 28, 0, 28)), "What is it?")]


@pytest.fixture(scope="module")
def found(tiny, prompts):
    return {pool: features(tiny, prompts, SITES, pool) for pool in ("cell", "mean")}


def reference_cells(spec, prompt) -> dict[str, torch.Tensor]:
    """``site -> (cells, F)`` straight from transformers: hidden states, image features, and a plain hook on
    vision block 1 read in the merger's grouping (4 consecutive window-order patches per cell, cells put back
    in raster order with the window permutation, as the model's own merger does)."""
    kept = []
    handle = vision_blocks(spec)[1].register_forward_hook(lambda module, args, output: kept.append(output))
    try:
        with torch.no_grad():
            out = spec.model(**prompt, output_hidden_states=True)
    finally:
        handle.remove()
    image = prompt["input_ids"][0] == spec.config.image_token_id
    grid, vision = prompt["image_grid_thw"], spec.config.vision_config
    window, _ = get_vision_window_index(grid, vision.spatial_merge_size, vision.window_size, vision.patch_size)
    with torch.no_grad():
        merged = multimodal(spec).get_image_features(prompt["pixel_values"], grid).pooler_output[0]
    return {"vision.blocks.1.output": kept[0].reshape(-1, 4 * kept[0].shape[-1])[torch.argsort(window)],
            "vision.merger.output": merged,
            "decoder.layers.0.output": out.hidden_states[1][0, image],
            "decoder.layers.2.output": out.hidden_states[3][0, image]}


def test_features_are_the_model_own_states_at_the_image_tokens_per_picture(tiny, prompts, found):
    for i, prompt in enumerate(prompts):
        reference = reference_cells(tiny, prompt)
        for site in SITES:
            cells, pooled = found["cell"][site][i], found["mean"][site][i]
            torch.testing.assert_close(cells, reference[site], atol=2e-5, rtol=1e-4)
            expected_mean = reference[site].reshape(-1, tiny.config.vision_config.hidden_size).mean(0) if (
                site.startswith("vision.blocks")) else reference[site].mean(0)  # a vision site: mean over patches
            torch.testing.assert_close(pooled, expected_mean, atol=2e-5, rtol=1e-4)


def test_pooled_and_per_cell_shapes_follow_each_picture_grid(tiny, prompts, found):
    width, vision_width = tiny.config.text_config.hidden_size, tiny.config.vision_config.hidden_size
    assert [tuple(x.shape) for x in found["cell"]["decoder.layers.2.output"]] == [(6, width), (12, width), (6, width)]
    assert [tuple(x.shape) for x in found["cell"]["vision.blocks.1.output"]] == [(6, 4 * vision_width),
                                                                                 (12, 4 * vision_width),
                                                                                 (6, 4 * vision_width)]
    assert {tuple(x.shape) for x in found["mean"]["vision.blocks.1.output"]} == {(vision_width,)}
    assert {tuple(x.shape) for x in found["mean"]["decoder.layers.0.output"]} == {(width,)}


@pytest.fixture(scope="module")
def painted_set(tiny, painted):
    """12 pictures of two sizes, each with one cell painted black: per cell, "black" or "picture"."""
    prompts, labels = [], []
    for k in range(12):
        height = 56 if k % 2 else 84
        rows, cols = height // 28, 3
        row, col = divmod(k % (rows * cols), cols)
        prompts.append(encode(tiny, painted(height, 84, box=(row * 28, row * 28 + 28, col * 28, col * 28 + 28)),
                              "What is it?"))
        cells = np.full((rows, cols), "picture", dtype=object)
        cells[row, col] = "black"
        labels.append(cells)
    return prompts, labels


def test_a_painted_cell_is_read_from_the_patch_embedding_and_the_control_is_its_own_probe(tiny, painted_set):
    prompts, labels = painted_set
    control = anatomy.load("tiny", seed=1)
    sites = ["vision.patch_embed", "decoder.layers.3.output"]
    result = probe(tiny, prompts, {"painted": labels}, sites, pool="cell", control=control, test=0.25, seed=3)
    assert sorted(result.train.tolist() + result.test.tolist()) == list(range(12)) and len(result.test) == 3
    assert result.grids == [(3, 3), (2, 3)] * 6
    # a black patch embeds to one fixed vector: linearly separable from the pixels, on any weights
    assert result.accuracy["painted"][0] == 1.0 and result.control["painted"][0] == 1.0
    held = np.concatenate([labels[i].reshape(-1) for i in result.test])
    assert result.chance["painted"] == pytest.approx(np.mean(held == "picture"))  # "picture" is the majority
    alone = probe(control, prompts, {"painted": labels}, sites, pool="cell", test=0.25, seed=3)
    np.testing.assert_array_equal(result.control["painted"], alone.accuracy["painted"])
    assert alone.control is None


def test_ridge_probe_matches_numpy_least_squares():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=300)
    x = 3 * rng.normal(size=(4, 12))[y] + rng.normal(size=(300, 12))  # 4 well separated clusters
    assert ridge_accuracy(torch.tensor(x[:200]), y[:200], torch.tensor(x[200:]), y[200:], ridge=1e-6) > 0.9
    noise = rng.integers(0, 4, size=300)
    assert ridge_accuracy(torch.tensor(x[:200]), noise[:200], torch.tensor(x[200:]), noise[200:]) < 0.45
    for train in (200, 8):  # the primal form (more rows than columns), then the dual one (fewer)
        mean, std = x[:train].mean(0), x[:train].std(0) + 1e-6  # the same probe, fitted by numpy's lstsq
        design = np.hstack([(x[:train] - mean) / std, np.ones((train, 1))])
        weights = np.linalg.lstsq(design, np.eye(4)[y[:train]], rcond=None)[0]  # least norm when underdetermined
        by_numpy = (np.hstack([(x[200:] - mean) / std, np.ones((100, 1))]) @ weights).argmax(1)
        ours = ridge_accuracy(torch.tensor(x[:train]), y[:train], torch.tensor(x[200:]), y[200:], ridge=1e-9)
        assert ours == pytest.approx((by_numpy == y[200:]).mean())


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": ["a", "b"]}, "labels 'label' has 2 entries for 3 prompts"),
    ({"labels": ["a", "a", "a"]}, "labels 'label' have 1 class(es) ['a']; a probe needs at least two"),
    ({"pool": "cell", "labels": [np.zeros((2, 3))] * 3}, ("labels 'label'[1] has shape (2, 3); prompt 1's picture is "
                                                       "4 x 3 cells")),
    ({"sites": ["decoder.layers.9.output"]}, "index 9 is out of range; this model has 4 layers"),
    ({"sites": ["decoder.layrs.0.output"]}, "unknown site 'decoder.layrs.0.output'"),
    ({"pool": "max"}, "pool='max'; expected one of ('mean', 'cell')"),
    ({"test": 1.0}, "test=1.0; expected the held-out share"),
])
def test_bad_input_is_one_clear_error_before_the_model_runs(tiny, prompts, change, message):
    before, calls = hooks(tiny.model), []  # transformers keeps hooks of its own once hidden states were asked for
    handle = tiny.model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        arguments = {"labels": ["a", "b", "a"], "sites": SITES, "test": 0.3, "seed": None} | change
        with pytest.raises(ValueError) as error:
            probe(tiny, prompts, **arguments)
    finally:
        handle.remove()
    assert message in str(error.value)
    assert calls == [] and hooks(tiny.model) == before


def test_a_prompt_without_a_picture_and_a_site_without_image_tokens_are_refused_with_nothing_left(tiny, prompts):
    before = hooks(tiny.model)
    with pytest.raises(ValueError, match="prompt 1 has no picture"):
        probe(tiny, [prompts[0], encode(tiny, text="Hello"), prompts[2]], ["a", "b", "a"], SITES, test=0.3, seed=None)
    with pytest.raises(ValueError, match=r"site 'decoder.position_ids' gives shape \(3, 2, \d+\)"):
        probe(tiny, prompts, ["a", "b", "a"], ["decoder.position_ids"], test=0.3, seed=None)  # fails inside the capture
    assert hooks(tiny.model) == before
