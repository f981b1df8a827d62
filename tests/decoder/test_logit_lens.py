"""Logit lens against transformers' logits (last layer) and hidden states (earlier layers)."""

import io
import warnings

import pytest
import torch

from anatomy.decoder.logit_lens import LensSteps, lens_logits, lens_steps, logit_lens, residuals, steps_figure
from anatomy.lab.figures import drawable


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
    top = tiny.processor.tokenizer.decode([int(reference.logits[0, -1].argmax())])
    assert lens[-1][0][0][0] == top  # decoded for people, not the byte-level form


def test_position_out_of_range_is_named(tiny, batch):
    seq = batch["input_ids"].shape[1]
    with pytest.raises(ValueError, match=f"position \\[{seq}\\] out of range; the prompt has {seq} tokens"):
        logit_lens(tiny, batch, positions=[seq])


def test_lens_steps_read_the_rows_generate_chose_with(tiny, batch):
    """Last layer of every step: top token and probability equal generate's own scores, step by step."""
    steps = lens_steps(tiny, batch, max_new_tokens=3, top_k=2)
    with torch.no_grad():
        out = tiny.model.generate(**batch, max_new_tokens=3, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True)
    chosen = out.sequences[0, batch["input_ids"].shape[1]:]
    assert steps.tokens == [tiny.processor.tokenizer.decode([int(i)]) for i in chosen]
    for step, scores in zip(steps.lens, out.scores):
        probabilities = torch.softmax(scores[0].float(), dim=-1)
        token, probability = step[-1][0]
        assert token == tiny.processor.tokenizer.decode([int(probabilities.argmax())])
        assert abs(probability - probabilities.max().item()) < 1e-5
    assert len(steps.lens[0]) == tiny.config.text_config.num_hidden_layers


def test_steps_figure_refuses_a_step_it_does_not_have(tiny, batch):
    steps = lens_steps(tiny, batch, max_new_tokens=2)
    with pytest.raises(ValueError, match="step=2; expected 0 to 1"):
        steps_figure(steps, 2)


def test_steps_figure_draws_any_script_labels_every_step_and_keeps_one_scale():
    """A real top token can be in any script: drawn by a font without it, it would be an empty box and a warning."""
    hangul = "\uc73c"  # the top token that layer 0 of the shipped toy chose in notebook 10
    steps = LensSteps(tokens=["yellow", "<|im_end|>"], lens=[[[(hangul, 0.01)], [("yellow", 0.03)]],
                                                             [[("<|im_end|>", 0.05)], [("<|im_end|>", 0.3)]]])
    figure = steps_figure(steps, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" is a UserWarning
        figure.savefig(io.BytesIO(), format="png")
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.texts] == [f"'{drawable(hangul, 16, wrap=18)}'", "'yellow'"]  # step 0 only
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0: 'yellow'", "1: '<|im_end|>'"]  # every step named
    assert axis.images[0].get_clim() == (0, 0.3)  # the largest top probability of any step, not 1
    assert steps_figure(steps, 1).axes[0].images[0].get_clim() == (0, 0.3)
