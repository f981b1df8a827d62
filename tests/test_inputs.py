"""Bad images get one clear error naming the value."""

import numpy as np
import pytest
import torch
from PIL import Image

from anatomy.inputs import demo_image, encode, load_image, request_messages


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_unreadable_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png.*cannot be read as an image"):
        load_image(path)


def test_empty_image():
    with pytest.raises(ValueError, match=r"empty \(0x10 pixels\)"):
        load_image(Image.new("RGB", (0, 10)))


def test_aspect_ratio_over_200_is_refused_like_the_processor():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(5, 1005)  # the official code refuses it too
    with pytest.raises(ValueError, match="1005x5 pixels has aspect ratio 201.0"):
        load_image(Image.new("RGB", (1005, 5)))
    assert load_image(Image.new("RGB", (1000, 5))).size == (1000, 5)  # 200 exactly is allowed


def test_wrong_types_and_shapes():
    with pytest.raises(TypeError, match="image is a int"):
        load_image(3)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        load_image(np.zeros((4, 4)))


def test_messages_are_the_reference_requests_shape():
    chat = request_messages(Image.new("RGB", (56, 56)))
    assert [m["role"] for m in chat] == ["system", "user"]
    assert [item["type"] for item in chat[1]["content"]] == ["image", "text"]


def test_a_prompt_is_the_batch_and_its_layout(tiny, batch, picture, reference):
    assert sorted(batch) == sorted(batch.batch) and batch["input_ids"] is batch.batch["input_ids"]
    with torch.no_grad():
        assert torch.equal(tiny.model(**batch).logits, reference.logits)  # unpacks like the BatchFeature
    assert batch.images == [picture] and torch.equal(batch.grid_thw, batch["image_grid_thw"])
    assert torch.equal(batch.kinds == 1, batch["input_ids"][0] == 151655)  # <|image_pad|> (docs/FACTS.md)


def test_a_prompt_without_image_says_so(tiny):
    prompt = encode(tiny, None, "Hello")
    assert prompt.images == [] and int(prompt.kinds.sum()) == 0
    with pytest.raises(ValueError, match="this prompt has no image"):
        prompt.image
    with pytest.raises(ValueError, match="this prompt has no image"):
        prompt.grid_thw


def test_demo_image_takes_height_then_width():
    assert demo_image(56, 84).size == (84, 56)  # PIL reports (width, height)
    with pytest.raises(ValueError, match=r"demo image of 20x84 \(H x W\)"):
        demo_image(20, 84)
