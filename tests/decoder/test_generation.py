"""Step-by-step generation against plain generate, get_rope_index and eager attention on the full sequence."""

import pytest
import torch

import anatomy
from anatomy.decoder.generation import generate_traced
from anatomy.decoder.mrope import rope_index

NEW = 4


@pytest.fixture(scope="module")
def small(tiny):
    from anatomy.inputs import demo_image, encode

    return encode(tiny, demo_image(84, 112))


@pytest.fixture(scope="module")
def trace(tiny, small):
    return generate_traced(tiny, small, max_new_tokens=NEW, layers=[0, 3])


def full_batch(tiny, small, sequence):
    """The prompt plus the generated tokens as one prompt (text after the image)."""
    extra = sequence.shape[1] - small["input_ids"].shape[1]
    return dict(small, input_ids=sequence, attention_mask=torch.ones_like(sequence),
                mm_token_type_ids=torch.nn.functional.pad(small["mm_token_type_ids"], (0, extra)))


def test_tokens_equal_plain_greedy_generate(tiny, small, trace):
    with torch.no_grad():
        plain = tiny.model.generate(**small, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(trace.sequence, plain)
    assert [step.token for step in trace.steps] == plain[0, small["input_ids"].shape[1]:].tolist()


def test_position_ids_equal_get_rope_index_of_the_whole_sequence(tiny, small, trace):
    ids, _ = rope_index(tiny, full_batch(tiny, small, trace.sequence))
    prompt = small["input_ids"].shape[1]
    for j, step in enumerate(trace.steps):
        assert step.position_ids == ids[:, 0, prompt + j].tolist()


def test_attention_rows_equal_eager_on_the_whole_sequence(tiny, small, trace):
    eager = anatomy.load("tiny", attn_implementation="eager")
    with torch.no_grad():
        out = eager.model(**full_batch(tiny, small, trace.sequence), output_attentions=True)
    prompt = small["input_ids"].shape[1]
    rows = list(range(prompt - 1, prompt - 1 + NEW))  # the rows that predicted each new token
    assert trace.attention.positions.tolist() == rows
    keys = trace.attention.probs.shape[-1]  # the last new token is never fed back
    for i, layer in enumerate([0, 3]):
        expected = out.attentions[layer][0, :, rows].mean(0)  # (rows, keys + 1)
        torch.testing.assert_close(trace.attention.probs[i, 0], expected[:, :keys], atol=1e-5, rtol=0)
        assert expected[:, keys:].sum() == 0
    probs = torch.softmax(out.logits[0, rows[0]], -1)
    assert trace.steps[0].top[0][1] == pytest.approx(probs.max().item(), abs=1e-6)


def test_only_what_was_asked_is_kept(tiny, small):
    trace = generate_traced(tiny, small, max_new_tokens=2, keep=("top",), top_k=3)
    assert trace.attention is None and trace.steps[0].position_ids is None and trace.steps[0].image_share is None
    assert len(trace.steps[0].top) == 3 and trace.steps[0].top[0][0] == trace.steps[0].text


def test_bad_arguments_name_the_value(tiny, small):
    with pytest.raises(ValueError, match="keep=\\['logits'\\] unknown"):
        generate_traced(tiny, small, keep=("logits",))
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate_traced(tiny, small, max_new_tokens=0)
