"""Recomputed attention rows against eager attention (output_attentions), with the model on sdpa."""

import pytest
import torch

import anatomy
from anatomy.capture.budget import AttentionBudgetExceeded
from anatomy.decoder.attention import (
    _keys,
    attention_rows,
    estimate_bytes,
    image_cells,
    image_map,
    record_attention,
    shares,
)
from anatomy.decoder.mrope import rope_index
from anatomy.model import token_kinds


@pytest.fixture(scope="module")
def eager(tiny, batch):
    model = anatomy.load("tiny", attn_implementation="eager")
    with torch.no_grad():
        return model.model(**batch, output_attentions=True)


def test_every_row_layer_and_head_equals_eager_and_logits_are_unchanged(tiny, batch, reference, eager):
    assert tiny.model.config._attn_implementation == "sdpa"
    seq = batch["input_ids"].shape[1]
    rows, output = attention_rows(tiny, batch, layers=None, rows=range(seq))
    assert torch.equal(output.logits, reference.logits)
    for i, layer in enumerate(rows.layers):
        torch.testing.assert_close(rows.probs[i], eager.attentions[layer][0], atol=1e-5, rtol=0)


def test_selected_rows_and_heads_equal_eager(tiny, batch, eager):
    rows, _ = attention_rows(tiny, batch, layers=[1, 3], heads=[2], rows=[-1, 5])
    assert rows.probs.shape == (2, 1, 2, batch["input_ids"].shape[1])
    seq = batch["input_ids"].shape[1]
    assert rows.positions.tolist() == [seq - 1, 5]
    for i, layer in enumerate([1, 3]):
        expected = eager.attentions[layer][0, [2]][:, [seq - 1, 5]]
        torch.testing.assert_close(rows.probs[i], expected, atol=1e-5, rtol=0)


def test_head_mean_equals_eager_mean(tiny, batch, eager):
    rows, _ = attention_rows(tiny, batch, layers=2, reduce="mean")
    torch.testing.assert_close(rows.probs[0, 0], eager.attentions[2][0, :, -1:].mean(0), atol=1e-5, rtol=0)


def test_bad_selections_name_the_value(tiny, batch):
    with pytest.raises(ValueError, match=r"layer \[4\] out of range; expected layers in 0..3"):
        attention_rows(tiny, batch, layers=4)
    with pytest.raises(ValueError, match=r"head \[-1\] out of range; expected heads in 0..3"):
        attention_rows(tiny, batch, layers=0, heads=[-1])
    with pytest.raises(ValueError, match="reduce='max'"):
        attention_rows(tiny, batch, layers=0, reduce="max")


def test_budget_is_checked_before_the_model_runs(tiny, batch):
    seq = batch["input_ids"].shape[1]
    hooks = sum(len(m._forward_hooks) for m in tiny.model.modules())
    needed = estimate_bytes(seq, seq, 4, 4)
    assert needed == 4 * 4 * seq * seq * 4 + 2 * 4 * seq * seq * 4
    with pytest.raises(AttentionBudgetExceeded, match=f"{needed:,} bytes .*, above budget_bytes=1,000"):
        attention_rows(tiny, batch, layers=None, rows=range(seq), budget_bytes=1000)
    assert sum(len(m._forward_hooks) for m in tiny.model.modules()) == hooks


def test_shares_sum_to_one_and_match_eager(tiny, batch, eager):
    rows, _ = attention_rows(tiny, batch, layers=None)
    split = shares(rows, batch)
    torch.testing.assert_close(split["image"] + split["text"] + split["first"], torch.ones(4))
    image = batch["input_ids"][0] == tiny.config.image_token_id
    expected = torch.stack([a[0, :, -1, image].sum(-1).mean() for a in eager.attentions])
    torch.testing.assert_close(split["image"], expected, atol=1e-5, rtol=0)


def test_image_cells_sit_where_the_rope_ids_put_each_token(tiny, batch):
    """Cell (row, col) of the map holds the token whose M-RoPE height/width ids are start+row, start+col."""
    kinds = token_kinds(tiny.config, batch["input_ids"])
    probs = torch.arange(kinds.shape[0], dtype=torch.float32)  # each key's value is its own position
    cells = image_cells(probs, kinds, batch["image_grid_thw"])[0]  # (h', w')
    ids, _ = rope_index(tiny, batch)
    start = int(torch.nonzero(kinds == 1)[0])
    for position in torch.nonzero(kinds == 1).flatten().tolist():
        row, col = int(ids[1, 0, position]) - start, int(ids[2, 0, position]) - start
        assert cells[row, col] == position


def test_image_map_refuses_an_uncaptured_layer(tiny, batch):
    rows, _ = attention_rows(tiny, batch, layers=[0])
    with pytest.raises(ValueError, match="layer 2 was not captured"):
        image_map(rows, batch, layer=2)


def test_record_attention_called_directly_enforces_the_budget_before_any_hook(tiny, batch):
    before = sum(len(m._forward_hooks) for m in tiny.model.modules())
    with pytest.raises(AttentionBudgetExceeded, match="above budget_bytes=1,000"):
        with record_attention(tiny, batch, rows=range(10), budget_bytes=1000):
            raise AssertionError("the block must not be entered")
    assert sum(len(m._forward_hooks) for m in tiny.model.modules()) == before


def test_keys_fail_loudly_when_transformers_stops_passing_the_cache(tiny, batch):
    module = tiny.model.model.language_model.layers[0].self_attn
    with pytest.raises(RuntimeError, match="without a 'cache' keyword .*must be updated"):
        _keys(module, {"position_embeddings": None, "past_key_values": None}, torch.zeros(1, 3, 128))
