"""The image-token logit lens with the user's words, against a direct computation: transformers' own hidden states
through the final norm and lm_head, and the model's own logits after the last layer."""

import io
import warnings

import numpy as np
import pytest
import torch

from anatomy.causal import image_lens
from anatomy.causal.lens import lens_figure
from anatomy.inputs import encode
from anatomy.lab.figures import drawable
from anatomy.model import decoder, lm_head
from anatomy.processor import one_line, token_texts

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["red", " blue", "house"]


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def prompt(tiny, painted):
    return encode(tiny, painted(56, 84), "What colour is the house?")  # 2 x 3 cells: not square


@pytest.fixture(scope="module")
def lens(tiny, prompt):
    return image_lens(tiny, prompt, WORDS, chunk=4)  # chunks that cut across cells and layers


@pytest.fixture(scope="module")
def direct(tiny, prompt):
    """``(layers, cells, vocab)`` logits at the image tokens: hidden state after each layer -> final norm -> lm_head,
    from transformers' ``output_hidden_states``; after the last layer, the model's own logits."""
    with torch.no_grad():
        out = tiny.model(**prompt, output_hidden_states=True)
        image = prompt["input_ids"][0] == tiny.config.image_token_id
        layers = len(out.hidden_states) - 1
        read = [lm_head(tiny)(decoder(tiny).norm(out.hidden_states[i + 1][0, image])) for i in range(layers - 1)]
    return torch.stack(read + [out.logits[0, image]])


def test_the_lens_is_the_final_norm_and_lm_head_on_transformers_hidden_states(tiny, lens, direct):
    layers, cells, _ = direct.shape
    assert lens.grid == (2, 3) and lens.top.shape == (layers, 2, 3) and lens.words == tuple(WORDS)
    tokenizer = tiny.processor.tokenizer
    ids = [tokenizer(w, add_special_tokens=False).input_ids[0] for w in WORDS]
    probability = torch.softmax(direct, -1)
    assert lens.top.reshape(-1).tolist() == token_texts(tokenizer, direct.argmax(-1).reshape(-1))  # decoded
    np.testing.assert_allclose(lens.top_probability.reshape(layers, cells), probability.max(-1).values, rtol=1e-4)
    np.testing.assert_allclose(lens.probability.reshape(layers, cells, 3), probability[..., ids], rtol=1e-4)
    ranks = [(direct > direct[..., [i]]).sum(-1) + 1 for i in ids]  # tokens with a higher logit, plus one
    np.testing.assert_array_equal(lens.rank.reshape(layers, cells, 3), torch.stack(ranks, -1).numpy())


def test_a_word_of_several_tokens_is_refused_showing_its_tokens_and_nothing_is_left(tiny, prompt):
    before = hooks(tiny.model)
    with pytest.raises(ValueError, match=r"word 'Qwen2\.5-VL' is \d+ tokens \['Q.*'\]; the lens reads one token"):
        image_lens(tiny, prompt, ["red", "Qwen2.5-VL"])
    with pytest.raises(ValueError, match="prompt 0 has no picture"):
        image_lens(tiny, encode(tiny, text="Hello"), ["red"])
    with pytest.raises(TypeError, match="words='red'; expected a list of strings"):
        image_lens(tiny, prompt, "red")
    assert hooks(tiny.model) == before


def test_the_figure_writes_each_cell_token_on_the_picture_of_its_own_size(lens):
    figure = lens_figure(lens, layers=[0, 3], word=" blue")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph missing from the fonts is a UserWarning
        figure.savefig(io.BytesIO(), format="png")
    panels = [axis for axis in figure.axes if axis.get_title().startswith("after decoder layer")]
    assert [axis.get_title() for axis in panels] == ["after decoder layer 0", "after decoder layer 3"]
    for axis, layer in zip(panels, [0, 3]):
        assert axis.get_images()[0].get_array().shape[:2] == (56, 84)  # the picture at its processed size
        written = [text.get_text().replace("\n", " ") for text in axis.texts]
        assert written == [drawable(one_line(t.strip() or t), 10) for t in lens.top[layer].reshape(-1)]
    with pytest.raises(ValueError, match=r"word='green' was not read; the lens read \['red', ' blue', 'house'\]"):
        lens_figure(lens, word="green")
    with pytest.raises(ValueError, match="layers=\\[4\\]; expected decoder layers 0 to 3"):
        lens_figure(lens, layers=[4])
