"""Logit lens against transformers' logits (last layer) and hidden states (earlier layers)."""

import pytest
import torch

from anatomy.decoder.logit_lens import lens_logits, logit_lens, residuals


def test_last_layer_lens_equals_the_models_logits(tiny, batch, reference):
    stream = residuals(tiny, batch, [-1, 3])
    torch.testing.assert_close(lens_logits(tiny, stream[-1]), reference.logits[0, [-1, 3]], atol=1e-5, rtol=1e-5)


def test_earlier_layers_read_transformers_hidden_states(tiny, batch, reference):
    stream = residuals(tiny, batch, [-1])
    for i in range(stream.shape[0] - 1):
        assert torch.equal(stream[i, 0], reference.hidden_states[i + 1][0, -1])


def test_top_tokens_are_sorted_and_the_last_layer_matches_argmax(tiny, batch, reference):
    lens = logit_lens(tiny, batch, positions=[-1], top_k=3)
    assert len(lens) == tiny.config.text_config.num_hidden_layers and len(lens[0][0]) == 3
    probabilities = [p for _, p in lens[-1][0]]
    assert probabilities == sorted(probabilities, reverse=True)
    top = tiny.processor.tokenizer.convert_ids_to_tokens(int(reference.logits[0, -1].argmax()))
    assert lens[-1][0][0][0] == top


def test_position_out_of_range_is_named(tiny, batch):
    seq = batch["input_ids"].shape[1]
    with pytest.raises(ValueError, match=f"position \\[{seq}\\] out of range; the prompt has {seq} tokens"):
        logit_lens(tiny, batch, positions=[seq])
