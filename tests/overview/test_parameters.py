"""Parameter anatomy against references: torch's own count and closed forms from the config."""

import pytest
import torch
from torch import nn

import anatomy
from anatomy.overview.parameters import (
    COMPONENTS,
    compare_sizes,
    count_parameters,
    double_count,
    plot_parameters,
    shared_tensors,
    torchinfo_summary,
    weight_memory,
)

SOURCES = ("tiny", "3B", "7B", "32B", "72B")


@pytest.fixture(scope="module", params=SOURCES)
def specimen(request):
    return anatomy.load(request.param)


def closed_form(config) -> dict[tuple[str, str], int]:
    """Parameter counts written out from the architecture and the config numbers alone."""
    t, v = config.text_config, config.vision_config
    h, L, I, V = t.hidden_size, t.num_hidden_layers, t.intermediate_size, t.vocab_size
    kv_width = t.num_key_value_heads * (h // t.num_attention_heads)  # kv heads x head_dim
    d, D, Iv, out = v.hidden_size, v.depth, v.intermediate_size, v.out_hidden_size
    merged = d * v.spatial_merge_size**2  # 2x2 neighbouring patches concatenated
    return {
        ("patch embedding", "proj"): v.in_chans * v.temporal_patch_size * v.patch_size**2 * d,  # conv, no bias
        ("vision blocks", "norms"): D * 2 * d,
        ("vision blocks", "attention qkv"): D * (d * 3 * d + 3 * d),
        ("vision blocks", "attention proj"): D * (d * d + d),
        ("vision blocks", "MLP"): D * (2 * (d * Iv + Iv) + Iv * d + d),  # gate, up, down, all with bias
        ("merger", "ln_q"): d,
        ("merger", "mlp"): (merged * merged + merged) + (merged * out + out),
        ("token embedding", ""): V * h,
        ("decoder layers", "attention q_proj"): L * (h * h + h),
        ("decoder layers", "attention k_proj"): L * (h * kv_width + kv_width),
        ("decoder layers", "attention v_proj"): L * (h * kv_width + kv_width),
        ("decoder layers", "attention o_proj"): L * h * h,  # no bias
        ("decoder layers", "MLP"): L * 3 * h * I,  # gate, up, down, no bias
        ("decoder layers", "norms"): L * 2 * h,
        ("final norm", ""): h,
        ("lm_head", ""): 0 if config.tie_word_embeddings else V * h,
    }


def test_total_is_torchs_count(specimen):
    # model.parameters() yields a tied tensor once: the true count
    assert count_parameters(specimen).total == sum(p.numel() for p in specimen.model.parameters())


def test_every_part_matches_the_closed_form(specimen):
    counts = {(row.component, row.part): row.count for row in count_parameters(specimen).rows}
    assert counts == closed_form(specimen.config)


def test_tied_head_is_shown_once_as_tied(specimen):
    rows = [row for row in count_parameters(specimen).rows if row.component == "lm_head"]
    assert len(rows) == 1
    tied = specimen.model.lm_head.weight is specimen.model.get_input_embeddings().weight
    assert tied == specimen.config.tie_word_embeddings
    assert (rows[0].count == 0 and "tied to token embedding" in rows[0].note) if tied else rows[0].note == ""


@pytest.mark.parametrize(
    "size, published, tolerance",
    [("7B", 8_292_166_656, 0), ("3B", 3.75e9, 0.01e9), ("32B", 33.5e9, 0.1e9), ("72B", 73.4e9, 0.1e9)],
)
def test_published_totals(size, published, tolerance):
    assert abs(count_parameters(anatomy.load(size)).total - published) <= tolerance


def test_components_come_in_data_flow_order():
    assert list(count_parameters(anatomy.load("tiny")).by_component()) == list(COMPONENTS)


def test_compare_sizes_totals_are_torchs_counts():
    table = compare_sizes(["3B", "7B"])
    total = next(row for row in table.rows if row[0] == "total")
    assert total[1:] == [sum(p.numel() for p in anatomy.load(s).model.parameters()) for s in ("3B", "7B")]
    assert "3B: tied to token embedding" in table.notes[0]


def test_weight_memory_matches_element_sizes():
    model = anatomy.load("7B").model  # skeletons are bf16: element_size() == 2
    rows = {row[0]: row[2] for row in weight_memory(anatomy.load("7B")).rows}
    assert rows["bfloat16"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert rows["float32"] == sum(p.numel() * torch.finfo(torch.float32).bits // 8 for p in model.parameters())
    assert rows["int4"] == rows["int8"] // 2 == 8_292_166_656 // 2


def test_torchinfo_counts_the_tied_tensor_twice():
    model = anatomy.load("3B").model
    check = double_count(model)
    config = model.config.text_config
    assert check.torchinfo_total == sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert check.difference == config.vocab_size * config.hidden_size
    embedding = next(path for path, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert shared_tensors(model) == [("lm_head.weight", embedding, check.difference)]
    assert double_count(anatomy.load("7B")).difference == 0


def test_torchinfo_summary_shows_the_tree_and_the_note():
    text = torchinfo_summary(anatomy.load("tiny"), depth=2)
    assert "Qwen2_5_VisionTransformerPretrainedModel" in text and "Total params" in text
    assert "lm_head.weight is model.language_model.embed_tokens.weight" in text


def test_plot_has_one_bar_length_per_component():
    table = count_parameters(anatomy.load("7B"))
    figure = plot_parameters(table)
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_yticklabels()] == list(COMPONENTS)
    widths = [sum(bar.get_width() for bar in axis.patches if round(bar.get_y() + bar.get_height() / 2) == y)
              for y in range(len(COMPONENTS))]
    assert widths == list(table.by_component().values())


def test_plot_names_every_visible_part_the_q_k_v_o_projections_too():
    axis = plot_parameters(count_parameters(anatomy.load("7B"))).axes[0]
    names = [text.get_text() for text in axis.texts]
    for part in ("q_proj", "k_proj", "v_proj", "o_proj", "qkv", "proj", "MLP"):
        assert part in names, part
    assert "norms" not in names  # too thin to see: no name pointing at nothing


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: count_parameters("7B"), "expected a Specimen or a torch nn.Module"),
        (lambda: count_parameters(nn.Linear(2, 2)), "expected a Qwen2.5-VL model"),
        (lambda: compare_sizes("7B"), "sizes='7B'"),
            (lambda: compare_sizes(["tiny"]), r"sizes=\['tiny'\]; expected a list of released sizes"),
        (lambda: weight_memory(-1), "parameter count -1"),
        (lambda: weight_memory(8.29e9), "or a parameter count \\(int\\), got float 8290000000.0"),
        (lambda: torchinfo_summary(anatomy.load("tiny"), depth=-1), "depth=-1"),
        (lambda: plot_parameters(None), "expected the ParameterTable"),
    ],
)
def test_bad_input_fails_with_a_clear_message(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()
