"""Where the parts of Qwen2.5-VL sit (against transformers' own attribute paths), token and block kinds,
selections, and what a Specimen refuses. Released values from docs/FACTS.md."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import anatomy
from anatomy.model import (
    Specimen,
    block_kinds,
    check_heads,
    decoder,
    decoder_layers,
    head_path,
    lm_head,
    locate,
    multimodal,
    select,
    token_kinds,
    tower_paths,
    unwrap,
    vision_blocks,
    vision_tower,
)


@pytest.mark.parametrize("size", ["tiny", "7B"])
def test_navigation_finds_transformers_own_modules(tiny, size):
    specimen = tiny if size == "tiny" else anatomy.load(size)
    model = specimen.model  # transformers 5 lays them out like this (docs/FACTS.md, "Module tree")
    assert vision_tower(specimen) is model.model.visual and vision_blocks(specimen) is model.model.visual.blocks
    assert decoder(specimen) is model.model.language_model
    assert decoder_layers(model) is model.model.language_model.layers
    assert multimodal(specimen) is model.model and lm_head(specimen) is model.lm_head and head_path(model) == "lm_head"
    assert tower_paths(model) == {"vision": "model.visual", "decoder": "model.language_model"}


def test_locate_reads_a_list_of_paths_and_names_what_is_missing():
    paths = ["", "visual", "visual.patch_embed", "visual.merger", "visual.blocks", "model", "model.layers"]
    assert locate(paths, "patch_embed", "merger", "blocks") == "visual"
    with pytest.raises(ValueError, match=r"no module with children \('embed_tokens',\)"):
        locate(paths, "embed_tokens")


def test_released_blocks_7_15_23_31_attend_over_the_whole_image():
    kinds = block_kinds(anatomy.load("7B").config.vision_config)  # docs/FACTS.md, "Published configurations"
    assert [i for i, kind in enumerate(kinds) if kind == "full"] == [7, 15, 23, 31] and len(kinds) == 32


def test_token_kinds_are_the_image_pad_and_video_pad_ids(tiny, batch):
    kinds = token_kinds(tiny.config, batch["input_ids"])
    ids = batch["input_ids"][0]
    assert torch.equal(kinds == 1, ids == 151655) and torch.equal(kinds == 2, ids == 151656)  # docs/FACTS.md ids
    assert int((kinds == 1).sum()) == int(batch["image_grid_thw"].prod()) // 4  # one token per 2x2 patches


@pytest.mark.parametrize("chosen, message", [
    (4, r"layer \[4\] out of range; expected layers in 0..3"),
    ([], r"layer \[\] out of range"),
    ([True], r"layer \[True\] out of range"),
    (["0"], r"layer \['0'\] out of range"),
])
def test_select_names_a_bad_choice(chosen, message):
    with pytest.raises(ValueError, match=message):
        select(chosen, 4, "layer")


def test_select_and_check_heads_keep_the_order_asked_for(tiny):
    assert select(None, 3, "block") == [0, 1, 2] and select([2, 0], 3, "block") == [2, 0]
    assert check_heads(tiny.config, 3) == [3]


def test_unwrap_gives_the_module_and_refuses_the_rest(tiny):
    assert unwrap(tiny) is tiny.model and unwrap(tiny.model) is tiny.model
    linear = nn.Linear(2, 2)
    assert unwrap(linear, qwen=False) is linear
    with pytest.raises(TypeError, match="expected a Qwen2.5-VL model .* got Linear with model_type None"):
        unwrap(linear)
    with pytest.raises(TypeError, match="expected a Specimen or a torch nn.Module, got int"):
        unwrap(3)


def test_a_specimen_names_a_kind_it_does_not_know(tiny):
    with pytest.raises(ValueError, match=r"kind='random'; expected one of \('toy', 'tiny', 'untrained'"):
        Specimen(tiny.model, "tiny", "random")


def test_the_untrained_toy_is_labelled_untrained():
    from anatomy.toy import untrained_toy

    assert untrained_toy().kind == "untrained"


def test_the_package_names_are_imported_on_first_use_and_capture_stays_the_function():
    """``import anatomy`` imports no torch (the suite's own tools start without it); each package-level name is
    the object of the module it lives in, and importing the subpackage ``anatomy.capture`` leaves the name
    ``anatomy.capture`` the function."""
    import anatomy.capture.hooks  # noqa: F401  (the subpackage, imported by name)
    from anatomy.capture import capture
    from anatomy.sources import load

    script = "import sys, anatomy, anatomy.processes; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert anatomy.capture is capture and anatomy.load is load and "Specimen" in dir(anatomy)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        anatomy.nothing
