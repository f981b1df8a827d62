"""Tokens against references: the seed's tokenizer dump, the seed's request, qwen_vl_utils, the processor."""

import re

import pytest
import torch
from PIL import Image
from qwen_vl_utils import smart_resize

from anatomy.model import tokenizer_of
from anatomy.overview.tokens import (
    image_cost_table,
    image_token_count,
    resized_size,
    special_tokens,
    token_html,
    token_runs,
)
from anatomy.processor import offline_processor

# The seed's added_tokens_decoder, id: (content, special). The seed's note lost the text of
# 151657 and all of 151658 to HTML stripping; they are <tool_call> and </tool_call>.
SEED_ADDED = {
    151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True), 151647: ("<|object_ref_end|>", True), 151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True), 151650: ("<|quad_start|>", True), 151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True), 151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True), 151656: ("<|video_pad|>", True), 151657: ("<tool_call>", False),
    151658: ("</tool_call>", False), 151659: ("<|fim_prefix|>", False), 151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False), 151662: ("<|fim_pad|>", False), 151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}  # fmt: skip
SEED_ADDITIONAL_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                           "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
SEED_REQUEST = [  # the seed's curl body
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://modelscope.oss-cn-beijing.aliyuncs.com/resource/qwen.png"}},
        {"type": "text", "text": "What is the text in the illustrate?"},
    ]},
]  # fmt: skip
SEED_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>What is the text in the illustrate?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
RELEASED = {"factor": 28, "min_pixels": 4 * 28 * 28, "max_pixels": 16384 * 28 * 28}  # preprocessor_config.json
SIZES = [(224, 224), (480, 640), (1080, 1920), (28, 28)]  # (height, width)


@pytest.fixture(scope="module")
def processor():
    return offline_processor()


def pads_in_processed_input(processor, height, width) -> int:
    prompt = processor.apply_chat_template(SEED_REQUEST, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[prompt], images=[Image.new("RGB", (width, height))], return_tensors="pt")
    return int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())


def test_hello_world(processor):
    assert processor.tokenizer("Hello world").input_ids == [9707, 1879]


def test_special_tokens_are_the_seeds(processor):
    table = special_tokens(processor)
    assert {int(row[0]): (row[1], row[2] == "yes") for row in table.rows} == SEED_ADDED
    roles = {row[1]: row[3] for row in table.rows}
    assert roles["<|im_end|>"] == "eos_token" and roles["<|endoftext|>"] == "pad_token"
    assert all(row[4] for row in table.rows)  # every added token has its role explained
    assert processor.tokenizer.extra_special_tokens == SEED_ADDITIONAL_SPECIAL


def test_chat_template_on_the_seed_request(processor):
    assert processor.apply_chat_template(SEED_REQUEST, tokenize=False, add_generation_prompt=True) == SEED_PROMPT


def test_default_system_message_is_inserted(processor):
    prompt = processor.apply_chat_template(SEED_REQUEST[1:], tokenize=False, add_generation_prompt=True)
    assert prompt == SEED_PROMPT


def test_add_vision_id_numbers_pictures_and_videos(processor):
    content = [{"type": "image"}, {"type": "video"}, {"type": "image"}, {"type": "text", "text": "Compare."}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True, add_vision_id=True
    )
    assert re.findall(r"(Picture \d|Video \d): <\|vision_start\|>", prompt) == ["Picture 1", "Video 1", "Picture 2"]


@pytest.mark.parametrize("height, width", SIZES)
def test_image_token_count_is_smart_resize_and_the_processors(processor, height, width):
    new_h, new_w = smart_resize(height, width, **RELEASED)  # qwen_vl_utils: the reference resize
    assert resized_size(processor, height, width) == (new_h, new_w)
    assert image_token_count(processor, height, width) == (new_h // 28) * (new_w // 28)
    assert image_token_count(processor, height, width) == pads_in_processed_input(processor, height, width)


def test_image_cost_table_rows(processor):
    rows = image_cost_table(processor, SIZES).rows
    assert [row[3] for row in rows] == [(h // 28) * (w // 28) for h, w in (smart_resize(*s, **RELEASED) for s in SIZES)]
    assert all(row[2] == 4 * row[3] for row in rows)  # 2x2 patches merge into one token


def test_token_runs_fold_repeated_special_tokens_only(processor):
    ids = processor.tokenizer(SEED_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * 64) + "aaaa aaaa").input_ids
    runs = token_runs(processor, torch.tensor([ids]))
    assert [i for run in runs for i in [run.id] * run.count] == ids  # unfolds to the input
    pad = next(run for run in runs if run.text == "<|image_pad|>")
    assert pad.count == 64 and pad.special
    assert all(run.count == 1 for run in runs if not run.special)
    assert "".join(run.text * run.count for run in runs) == processor.tokenizer.decode(ids)


def test_token_html_marks_special_tokens_and_folds_the_image(processor):
    prompt = processor.apply_chat_template(SEED_REQUEST, tokenize=False, add_generation_prompt=True)
    ids = processor(text=[prompt], images=[Image.new("RGB", (224, 224))])["input_ids"][0]
    html = token_html(processor, ids)
    assert "&lt;|image_pad|&gt; ×64</span>" in html
    assert html.count("<span") == len(token_runs(processor, ids))
    assert html.count("font-weight:bold") == sum(run.special for run in token_runs(processor, ids))
    assert f"<b>{len(ids)} tokens</b>" in html


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: tokenizer_of(3), "expected a Specimen, a processor or a tokenizer, got int"),
        (lambda p: token_runs(p, [-1]), "tokens=\\[-1\\]; expected text, or ids"),
        (lambda p: token_runs(p, 3.5), "tokens=3.5"),
        (lambda p: token_runs(p, torch.zeros(2, 3, dtype=torch.long)), "1-row tensor"),
        (lambda p: image_token_count(p, 0, 10), "image size height=0, width=10"),
        (lambda p: image_token_count(p, 2, 500), "aspect ratio 250.0; .* refuses an aspect ratio above 200"),
        (lambda p: image_token_count("proc", 28, 28), "expected a Specimen, a processor or a Qwen2-VL image processor"),
        (lambda p: image_cost_table(p, (224, 224)), "sizes=\\(224, 224\\); expected a list of \\(height, width\\)"),
    ],
)
def test_bad_input_fails_with_a_clear_message(processor, call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(processor)
