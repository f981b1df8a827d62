"""intervene(): each edit against a reference computed without it (by hand, or by transformers itself)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import anatomy
from anatomy.capture import capture
from anatomy.causal import intervene, knock_out, mean, patch, record, zero
from anatomy.toy import sample
from anatomy.toy.encode import encode


def _batch(spec, samples):
    batch = encode(samples, spec.processor)
    batch.pop("labels")
    return batch


@pytest.fixture(scope="module")
def eager_tiny():
    return anatomy.load("tiny", attn_implementation="eager")


@pytest.fixture(scope="module")
def pair(tiny):
    """Two one-picture prompts of one layout: the same question about two pictures."""
    first = sample(0, "test", 0)
    second = dataclasses.replace(first, scene=sample(0, "test", 3).scene)
    return _batch(tiny, [first]), _batch(tiny, [second])


@pytest.fixture(scope="module")
def padded(tiny):
    """Two rows of different lengths, left-padded: masks and positions must respect the padding."""
    return _batch(tiny, [sample(0, "test", 0), sample(0, "test", 1)])


def _logits(spec, batch, edits=()):
    with torch.no_grad(), intervene(spec, list(edits)):
        return spec.model(**batch).logits


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_identity_edits_leave_logits_bit_identical(tiny, padded):
    reference = _logits(tiny, padded)
    same = record(tiny, padded, ["vision.blocks.*.output", "vision.merger.output", "decoder.layers.*.output"])
    empty = [zero("decoder.layers.1.output", rows=[]), zero("vision.merger.output", rows=[])]
    assert torch.equal(_logits(tiny, padded, empty), reference)
    copies = [patch(name, same) for name in same.tensors]
    assert torch.equal(_logits(tiny, padded, copies), reference)


def test_patching_every_decoder_layer_from_b_gives_b(tiny, pair):
    a, b = pair
    source = record(tiny, b, "decoder.layers.*.output")
    patched = _logits(tiny, a, [patch("decoder.layers.*.output", source)])
    assert not torch.allclose(_logits(tiny, a), _logits(tiny, b))
    assert torch.equal(patched, _logits(tiny, b))


def test_zeroed_merger_output_equals_zeroed_embeddings_by_hand(tiny, padded):
    edited = _logits(tiny, padded, [zero("vision.merger.output")])
    model = tiny.model.model
    ids = padded["input_ids"]
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == tiny.config.image_token_id] = 0.0  # the image tokens' embeddings, zeroed by hand
        positions, _ = model.get_rope_index(ids, padded["mm_token_type_ids"], padded["image_grid_thw"],
                                            attention_mask=padded["attention_mask"])
        by_hand = tiny.model(inputs_embeds=embeds, attention_mask=padded["attention_mask"], position_ids=positions)
    torch.testing.assert_close(edited, by_hand.logits, rtol=0, atol=1e-6)


def test_zeroed_cell_is_that_cell_in_raster_order(tiny, pair):
    a, _ = pair
    sites = ["vision.blocks.1.output", "decoder.inputs_embeds"]
    with torch.no_grad(), capture(tiny, sites) as clean:
        tiny.model(**a)
    edits = [zero("vision.blocks.1.output", cells=[(2, 1)]), zero("vision.merger.output", cells=[(0, 3)])]
    with torch.no_grad(), intervene(tiny, edits), capture(tiny, sites) as edited:
        tiny.model(**a)
    patches = edited["vision.blocks.1.output"].reshape(8, 8, -1)  # raster: (rows, cols, D) of patches
    changed = (patches != clean["vision.blocks.1.output"].reshape(8, 8, -1)).any(-1)
    assert changed.nonzero().tolist() == [[4, 2], [4, 3], [5, 2], [5, 3]] and not patches[4:6, 2:4].any()
    image = a["input_ids"][0] == tiny.config.image_token_id
    tokens = edited["decoder.inputs_embeds"][0, image]  # (16, D), raster over the 4x4 cells
    assert not tokens[3].any() and (tokens[3] != clean["decoder.inputs_embeds"][0, image][3]).any()


def test_mean_ablation_writes_the_reference_mean(tiny, pair, padded):
    a, b = pair
    reference = record(tiny, _batch(tiny, [sample(0, "test", 0), dataclasses.replace(sample(0, "test", 0),
                                     scene=sample(0, "test", 3).scene)]), "decoder.layers.0.output")
    with torch.no_grad(), intervene(tiny, [mean("decoder.layers.0.output", reference, positions=[-1])]), \
            capture(tiny, "decoder.layers.0.output") as cache:
        tiny.model(**a)
    with torch.no_grad(), capture(tiny, "decoder.layers.0.output") as both:
        tiny.model(**a)
        tiny.model(**b)
    by_hand = (both.get("decoder.layers.0.output", step=0) + both.get("decoder.layers.0.output", step=1)) / 2
    torch.testing.assert_close(cache["decoder.layers.0.output"][0, -1], by_hand[0, -1], rtol=0, atol=1e-6)


def _hand_mask(batch, config, layers_forbid):
    """Causal + padding mask as eager attention adds it ``(B, 1, L, L)``, with ``layers_forbid`` (B, L, L) set."""
    keep = batch["attention_mask"].bool()
    length = keep.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & keep[:, None, :]  # (B, L, L)
    allowed &= ~layers_forbid
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]


def _answer_to_image(batch, config):
    image = batch["input_ids"] == config.image_token_id
    forbid = torch.zeros(*image.shape, image.shape[1], dtype=torch.bool)
    forbid[:, -1] = image  # the last position may not see any image token
    return forbid


def test_knockout_in_every_layer_equals_eager_with_the_mask_by_hand(tiny, eager_tiny, padded):
    model = eager_tiny.model
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(padded["input_ids"], padded["mm_token_type_ids"],
                                                  padded["image_grid_thw"], attention_mask=padded["attention_mask"])
        mask = _hand_mask(padded, eager_tiny.config, _answer_to_image(padded, eager_tiny.config))
        by_hand = model(**{**padded, "attention_mask": mask}, position_ids=positions).logits
    all_layers = knock_out(range(eager_tiny.config.text_config.num_hidden_layers), queries=[-1], keys="image")
    real = padded["attention_mask"].bool()  # padding rows see no key at all: their logits mean nothing
    for spec in (eager_tiny, tiny):  # eager and sdpa kernels
        edited = _logits(spec, padded, [all_layers])
        torch.testing.assert_close(edited[real], by_hand[real], rtol=0, atol=1e-5)
    assert not torch.allclose(_logits(tiny, padded)[:, -1], by_hand[:, -1], atol=1e-3)


def test_knockout_in_one_layer_equals_the_decoder_run_by_hand(tiny, eager_tiny, padded):
    model = eager_tiny.model
    sites = ["decoder.inputs_embeds", "decoder.rotary.cos", "decoder.rotary.sin"]
    with torch.no_grad(), capture(eager_tiny, sites) as cache:
        model(**padded)
    causal = _hand_mask(padded, eager_tiny.config, torch.zeros(1, dtype=torch.bool))
    knocked = _hand_mask(padded, eager_tiny.config, _answer_to_image(padded, eager_tiny.config))
    hidden = cache["decoder.inputs_embeds"]
    rotary = (cache["decoder.rotary.cos"], cache["decoder.rotary.sin"])
    with torch.no_grad():
        for i, layer in enumerate(model.model.language_model.layers):
            hidden = layer(hidden, attention_mask=knocked if i == 1 else causal, position_embeddings=rotary)
        by_hand = model.lm_head(model.model.language_model.norm(hidden))
    real = padded["attention_mask"].bool()
    for spec in (eager_tiny, tiny):
        torch.testing.assert_close(_logits(spec, padded, [knock_out(1)])[real], by_hand[real], rtol=0, atol=1e-5)


def test_head_ablation_equals_o_proj_of_the_input_with_that_slice_zeroed(tiny, padded):
    attention = tiny.model.model.language_model.layers[2].self_attn
    seen = []
    handle = attention.o_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad(), capture(tiny, "decoder.layers.2.self_attn") as clean:
            tiny.model(**padded)
    finally:
        handle.remove()
    with torch.no_grad(), intervene(tiny, [zero("decoder.layers.2.self_attn", heads=[1])]), \
            capture(tiny, "decoder.layers.2.self_attn") as edited:
        tiny.model(**padded)
    heads = seen[0].reshape(*seen[0].shape[:2], attention.config.num_attention_heads, -1)  # (B, L, H, hd)
    heads[:, :, 1] = 0.0
    by_hand = F.linear(heads.reshape(seen[0].shape), attention.o_proj.weight)
    torch.testing.assert_close(edited["decoder.layers.2.self_attn"], by_hand, rtol=0, atol=1e-6)
    assert not torch.allclose(edited["decoder.layers.2.self_attn"], clean["decoder.layers.2.self_attn"])


def test_generate_edits_the_prompt_and_matches_a_run_without_cache(tiny, pair):
    a, _ = pair
    edits = [zero("vision.merger.output", cells=[(0, 0), (2, 3)]), knock_out([0], queries=[-1], keys="image")]
    with torch.no_grad(), intervene(tiny, edits):
        out = tiny.model.generate(**a, max_new_tokens=3, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    prompt = a["input_ids"].shape[1]
    sequence = out.sequences
    for step, logits in enumerate(out.logits):  # each step recomputed from scratch, edits on the prompt's positions
        ids = sequence[:, : prompt + step]
        grown = {**a, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "mm_token_type_ids": F.pad(a["mm_token_type_ids"], (0, step))}
        no_cache = [edits[0], knock_out([0], queries=[prompt - 1], keys="image")]
        with torch.no_grad(), intervene(tiny, no_cache):
            full = tiny.model(**grown, use_cache=False).logits[:, -1]
        torch.testing.assert_close(logits, full, rtol=0, atol=1e-5)
    plain = tiny.model.generate(**a, max_new_tokens=1, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)
    assert not torch.allclose(plain.logits[0], out.logits[0])


def test_hooks_are_removed_on_every_exit(tiny, pair):
    a, _ = pair
    before = _hooks(tiny.model)
    edits = [zero("vision.merger.output"), zero("decoder.layers.1.self_attn", heads=[0]), knock_out(0)]
    with pytest.raises(RuntimeError, match="inside"), intervene(tiny, edits):
        assert _hooks(tiny.model) > before
        with torch.no_grad():
            tiny.model(**a)
        raise RuntimeError("inside the block")
    assert _hooks(tiny.model) == before
    with torch.no_grad(), intervene(tiny, edits):  # and on a normal exit
        tiny.model(**a)
    assert _hooks(tiny.model) == before


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda s, a: zero("decoder.layers.7.output"), "index 7 is out of range; this model has 4 layers"),
        (lambda s, a: zero("vision.merge.output"), "unknown site 'vision.merge.output'"),
        (lambda s, a: zero("vision.merger.output", cells=[(4, 0)]), r"cell \(4, 0\) is outside image 0's 4x4 grid"),
        (lambda s, a: zero("decoder.layers.0.input", cells=[(0, -1)]), r"cell \(0, -1\) is outside"),
        (lambda s, a: zero("decoder.layers.1.self_attn", heads=[4]), "head 4 is out of range.*4 heads"),
        (lambda s, a: zero("decoder.layers.1.mlp", heads=[0]), "heads= works on attention sites"),
        (lambda s, a: zero("decoder.layers.0.output", positions=[99]), "position 99 is outside the prompt"),
        (lambda s, a: knock_out(9), r"layer \[9\] out of range; expected layers in 0..3"),
        (lambda s, a: patch("decoder.layers.0.output", record(s, a[1], "decoder.layers.0.output")),
         "recorded on a prompt of another layout"),
        (lambda s, a: patch("vision.merger.output", record(s, a[2], "vision.merger.output")),
         "recorded on images of grid_thw"),
        (lambda s, a: patch("decoder.layers.0.output", record(anatomy.load("tiny"), a[0], "decoder.layers.0.output")),
         "recorded on another model"),
        (lambda s, a: patch("decoder.layers.1.output", record(s, a[0], "decoder.layers.0.output")),
         "source has no 'decoder.layers.1.output'"),
    ],
)
def test_bad_input_fails_before_the_model_runs_and_leaves_no_hook(tiny, padded, make, message):
    batch = _batch(tiny, [sample(0, "test", 0)])
    other_size = anatomy.inputs.encode(tiny, anatomy.demo_image(56, 56), "What colour is the circle?")
    edit = make(tiny, (batch, padded, other_size))  # sources are recorded here, before counting runs
    before, calls = _hooks(tiny.model), []
    counter = tiny.model.get_input_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message), intervene(tiny, [edit]):
            tiny.model(**batch)
    finally:
        counter.remove()
    assert calls == [] and _hooks(tiny.model) == before  # nothing ran, nothing is left behind
