"""The module tree against references: named_modules(), the seed's 4.49 print(model), parameter shapes."""

import re

import pytest
from torch import nn

import anatomy
from anatomy.lab.tables import Table
from anatomy.model import locate, tower_paths, unwrap
from anatomy.overview.structure import (
    CLASS_NOTES,
    counterpart_table,
    counterparts,
    model_tree,
    parse_tree,
    reference_tree_text,
    side_by_side,
    tree_text,
)


@pytest.fixture(scope="module")
def seven():
    return anatomy.load("7B").model


@pytest.fixture(scope="module")
def seed():
    return parse_tree(reference_tree_text())


@pytest.fixture(scope="module")
def rows(seed, seven):
    return counterparts(seed, model_tree(seven))


def test_seed_template_is_the_seed_notes_tree():
    assert reference_tree_text().splitlines()[0] == "Qwen2_5_VLForConditionalGeneration("
    assert "(0-27): 28 x Qwen2_5_VLDecoderLayer(" in reference_tree_text()


@pytest.mark.parametrize("source", ["tiny", "7B"])
def test_parsing_print_model_gives_named_modules(source):
    model = anatomy.load(source).model
    assert parse_tree(repr(model)) == model_tree(model)


def test_seed_tree_expands_the_repeated_blocks(seed):
    assert sum(re.fullmatch(r"visual\.blocks\.\d+", p) is not None for p in seed) == 32
    assert sum(re.fullmatch(r"model\.layers\.\d+", p) is not None for p in seed) == 28


def test_towers_are_found_in_both_layouts(seed, seven):
    assert tower_paths(seed) == {"vision": "visual", "decoder": "model"}  # transformers 4.49
    assert tower_paths(seven) == {"vision": "model.visual", "decoder": "model.language_model"}  # transformers 5
    assert locate(seven, "visual", "language_model") == "model"


def test_every_seed_module_has_a_counterpart_of_the_same_shape(rows, seven):
    for row in rows:
        if row.old is None or row.old.path.endswith("self_attn.rotary_emb"):
            continue
        assert row.new is not None, row.old.path
        assert row.new.args == row.old.args, row.old.path
        seven.get_submodule(row.new.path)  # the path resolves in today's skeleton


def test_seed_shapes_are_todays_parameter_shapes(rows, seven):
    """Read the seed's printed sizes back into parameter shapes, independently of extra_repr."""
    for row in rows:
        if row.old is None or row.new is None:
            continue
        module, args = seven.get_submodule(row.new.path), row.old.args
        numbers = [int(n) for n in re.findall(r"\d+", args.split("eps")[0].split("stride")[0])]
        if row.old.cls == "Linear":
            assert module.weight.shape == (numbers[1], numbers[0])
            assert (module.bias is not None) == ("bias=True" in args)
        elif row.old.cls in ("Embedding", "Qwen2RMSNorm"):
            assert tuple(module.weight.shape) == tuple(numbers)
        elif row.old.cls == "Conv3d":
            assert tuple(module.weight.shape) == (numbers[1], numbers[0], *numbers[2:])


def test_what_changed_since_4_49(rows):
    renamed = {(r.old.cls, r.new.cls) for r in rows if r.old and r.new and r.old.cls != r.new.cls}
    assert renamed == {
        ("Qwen2_5_VLSdpaAttention", "Qwen2_5_VLAttention"),
        ("Qwen2_5_VLVisionSdpaAttention", "Qwen2_5_VLVisionAttention"),
        ("Qwen2RMSNorm", "Qwen2_5_VLRMSNorm"),
        ("SiLU", "SiLUActivation"),
        ("Qwen2_5_VisionRotaryEmbedding", "Qwen2_5_VLVisionRotaryEmbedding"),
        ("Qwen2_5_VLModel", "Qwen2_5_VLTextModel"),
    }
    assert renamed <= set(CLASS_NOTES)
    removed = [r.old.path for r in rows if r.change == "removed"]
    assert removed == [f"model.layers.{i}.self_attn.rotary_emb" for i in range(28)]
    assert [(r.new.path, r.new.cls) for r in rows if r.change == "added"] == [("model", "Qwen2_5_VLModel")]
    moved = {r.old.path: r.new.path for r in rows if r.old and r.new}
    assert moved["visual.merger"] == "model.visual.merger"
    assert moved["model.embed_tokens"] == "model.language_model.embed_tokens"
    assert moved["lm_head"] == "lm_head"


def test_counterpart_table_folds_layer_indices(rows):
    table = counterpart_table(rows, only_changes=True)
    removed = [line for line in table.rows if line[4] == "removed"]
    assert removed[0][0] == "model.layers.{i}.self_attn.rotary_emb" and removed[0][5] == 28
    assert all(line[4] != "same" for line in table.rows)


def test_side_by_side_keeps_both_texts_whole(seven):
    left, right = reference_tree_text(), repr(seven)
    view = side_by_side(left, right)
    assert [r[1] for r in view.rows if r[1]] == left.splitlines()
    assert [r[2] for r in view.rows if r[2]] == right.splitlines()
    assert ("-", "          (rotary_emb): Qwen2_5_VLRotaryEmbedding()", "") in view.rows
    assert "<table>" in view._repr_html_() and str(view).splitlines()[0].startswith("transformers 4.49")


def test_tree_text_is_print_model_and_folds_below_depth():
    model = anatomy.load("tiny").model
    assert tree_text(model) == repr(model)
    folded = tree_text(model, depth=1).splitlines()
    assert folded[1] == "  (model): Qwen2_5_VLModel(...)" and len(folded) == 4


def test_table_renders_text_and_html():
    table = Table(["part", "parameters"], [["qkv", 4920320]], title="t", notes=("n",))
    assert str(table).splitlines() == ["t", "part  parameters", "----  ----------", "qkv    4,920,320", "n"]
    assert "<td style='text-align:right;white-space:normal'>4,920,320</td>" in table._repr_html_()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parse_tree("not a tree"), "expected print\\(model\\) text"),
        (lambda: parse_tree("M(\n  garbage\n)"), "cannot read line '  garbage'"),
        (lambda: tree_text(nn.Linear(1, 1), depth=-1), "depth=-1"),
        (lambda: locate(nn.Linear(1, 1), "patch_embed"), "expected a Qwen2.5-VL model"),
        (lambda: counterparts("seed", {}), "expected two trees"),
        (lambda: counterpart_table("rows"), "expected the list that counterparts\\(old, new\\) returns, got str"),
        (lambda: side_by_side(1, "x"), "expected two print\\(model\\) strings"),
        (lambda: unwrap(3), "expected a Specimen or a torch nn.Module, got int"),
    ],
)
def test_bad_input_fails_with_a_clear_message(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()
