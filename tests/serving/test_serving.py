"""Serving: the real `transformers serve` on a loopback port, the client's errors, the vLLM command.

References: the seed's own command and curl body (quoted below), the processor's
one-step chat template + image processing for the token count, and the OS for
"no process is left" (the pid and its process group are gone, nothing listens).
"""

import json
import shlex
import socket
import threading
from pathlib import Path

import httpx
import pytest

import anatomy
from anatomy.processes import group_members
from anatomy.serving import (
    REFERENCE_QUESTION,
    LocalServer,
    ServerDownError,
    ServerResponseError,
    ServerTimeoutError,
    answer_of,
    bridge,
    chat,
    chat_messages,
    chat_payload,
    free_port,
    image_url,
    post_chat,
    reference_payload,
    sample_image,
    vllm_command,
    where_it_looked,
)

SEED_COMMAND = (  # the seed's first code block, verbatim
    "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --host 0.0.0.0 --dtype bfloat16 "
    "--limit-mm-per-prompt image=5,video=5"
)
SEED_CURL_BODY = """{
    "model": "Qwen/Qwen2.5-VL-7B-Instruct",
    "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://modelscope.oss-cn-beijing.aliyuncs.com/resource/qwen.png"}},
        {"type": "text", "text": "What is the text in the illustrate?"}
    ]}
    ]
    }"""


@pytest.fixture(scope="module")
def specimen():
    return anatomy.load("tiny")


@pytest.fixture(scope="module")
def served(specimen):
    """One real server for the module (~10 s to save and start on 2 cores)."""
    with LocalServer(specimen) as server:
        yield server


@pytest.fixture(scope="module")
def seed_messages():
    """The seed's request shape: system message, one image as a data URL, the seed's question."""
    return chat_messages(REFERENCE_QUESTION, images=[sample_image()])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def test_seed_payload_is_the_seeds_curl_body():
    assert reference_payload() == json.loads(SEED_CURL_BODY)


def test_seed_request_shape(seed_messages):
    system, user = seed_messages
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert [item["type"] for item in user["content"]] == ["image_url", "text"]
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_openai_client_gets_answer_and_matching_token_count(served, specimen, seed_messages):
    answer = chat(served.base_url, seed_messages, served.model, max_tokens=8)
    assert answer.text.strip()
    assert answer.model == served.model
    assert answer.prompt_tokens == bridge(specimen.processor, seed_messages).local_tokens
    assert answer.usage["completion_tokens"] <= 8


def test_plain_http_gets_200_and_matching_token_count(served, specimen, seed_messages):
    payload = chat_payload(served.model, seed_messages, max_tokens=8)
    response = httpx.post(f"{served.base_url}/v1/chat/completions", json=payload, timeout=120)
    assert response.status_code == 200
    answer = answer_of(response.json())
    assert answer.text.strip()
    assert answer.prompt_tokens == bridge(specimen.processor, seed_messages).local_tokens
    assert answer_of(post_chat(served.base_url, payload)).prompt_tokens == answer.prompt_tokens


def test_bridge_count_is_the_processors_one_step_count(specimen, seed_messages):
    """The bridge (template, then expand the pads) against the processor doing both in one call."""
    native = [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": [{"type": "image", "image": sample_image()},
                                           {"type": "text", "text": REFERENCE_QUESTION}]}]  # fmt: skip
    inputs = specimen.processor.apply_chat_template(native, add_generation_prompt=True, tokenize=True, return_dict=True)
    counted = bridge(specimen.processor, seed_messages)
    assert counted.local_tokens == len(inputs["input_ids"][0])
    assert counted.image_tokens == [(112 // 28) * (280 // 28)]  # the 280x112 image: 10x4 cells of 28 px
    assert counted.prompt.count("<|image_pad|>") == 1


def test_where_it_looked_replays_the_request_over_its_image(specimen, seed_messages):
    figure = where_it_looked(specimen, seed_messages, max_new_tokens=2)
    assert figure.axes[0].images[0].get_array().shape[:2] == (112, 280)  # the 280x112 image, already 28-aligned
    assert "answer" in figure._suptitle.get_text()
    with pytest.raises(ValueError, match="no image_url item"):
        where_it_looked(specimen, chat_messages(REFERENCE_QUESTION), max_new_tokens=1)


def test_server_down_is_one_clear_error(seed_messages):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerDownError, match=f"no server answers at {url}"):
        chat(url, seed_messages, "anatomy-tiny")
    with pytest.raises(ServerDownError, match=f"no server answers at {url}"):
        post_chat(url, {"model": "anatomy-tiny", "messages": seed_messages})


def test_unknown_model_is_a_4xx_with_the_servers_words(served, seed_messages):
    with pytest.raises(ServerResponseError, match="HTTP 400.*refused.*no-such-model") as caught:
        chat(served.base_url, seed_messages, "no-such-model", max_tokens=2)
    assert caught.value.status == 400


def test_malformed_payload_is_a_422_naming_the_field(served):
    with pytest.raises(ServerResponseError, match="HTTP 422.*messagez") as caught:
        post_chat(served.base_url, {"model": served.model, "messagez": []})
    assert caught.value.status == 422


def test_missing_messages_is_a_5xx(served):
    with pytest.raises(ServerResponseError, match="HTTP 500 \\(the server failed\\)"):
        post_chat(served.base_url, {"model": served.model})


@pytest.mark.parametrize("send", ["openai", "http"])
def test_timeout_is_one_clear_error(silent_url, seed_messages, send):
    """The call gives up by itself: it returns while a bounded join waits, with the timeout's error."""
    raised = []

    def call():
        try:
            if send == "openai":
                chat(silent_url, seed_messages, "anatomy-tiny", timeout=0.5)
            else:
                post_chat(silent_url, chat_payload("anatomy-tiny", seed_messages), timeout=0.5)
        except Exception as error:  # noqa: BLE001 (checked below, whatever it is)
            raised.append(error)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "the call with timeout=0.5 had not returned after 30 s"
    assert len(raised) == 1 and isinstance(raised[0], ServerTimeoutError), raised
    assert "no answer within 0.5 s" in str(raised[0])


def test_bad_inputs_name_the_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such.png"):
        image_url("no/such.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        image_url(tmp_path / "notes.txt")
    with pytest.raises(TypeError, match="42"):
        image_url(42)
    with pytest.raises(TypeError, match="single str"):
        chat_messages("what?", images="photo.png")
    with pytest.raises(ValueError, match="localhost:8000"):
        chat("localhost:8000", [{"role": "user", "content": "hi"}], "m")
    with pytest.raises(ValueError, match="0.0.0.0"):
        LocalServer(host="0.0.0.0")


def test_saving_for_serving_draws_no_progress_bar_and_leaves_the_setting(specimen, tmp_path, capfd):
    from transformers.utils import logging as transformers_logging

    from anatomy.serving.server import save_for_serving

    assert transformers_logging.is_progress_bar_enabled()
    save_for_serving(specimen, tmp_path / "model")
    assert "Writing model shards" not in capfd.readouterr().err  # it would stay at 0% in a notebook's output
    assert transformers_logging.is_progress_bar_enabled()
    assert (tmp_path / "model" / "config.json").exists()


def test_vllm_command_seed_form_is_the_seeds():
    assert vllm_command(host="0.0.0.0", style="reference") == SEED_COMMAND


def test_vllm_command_json_form():
    words = shlex.split(vllm_command(max_pixels=512 * 28 * 28))
    assert words[words.index("--host") + 1] == "127.0.0.1"
    assert json.loads(words[words.index("--limit-mm-per-prompt") + 1]) == {"image": 5, "video": 5}
    assert json.loads(words[words.index("--mm-processor-kwargs") + 1]) == {"max_pixels": 512 * 28 * 28}


def test_failed_start_leaves_no_process(specimen):
    server = LocalServer(specimen, startup_timeout=0.1)
    with pytest.raises(TimeoutError, match="no answer from"):
        server.start()
    assert server.pid is not None and group_members(server.pid) == []
    assert not _listening(server.port)


def _temporary_dir(pid: int) -> str | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((entry[7:].decode() for entry in environ if entry.startswith(b"TMPDIR=")), None)


def test_exit_with_an_exception_stops_the_server(served):
    """Last in the module: stops the shared server the way a failing `with` block would. Right after it
    returns, nothing of the server's group is left, not even a zombie (its "spawn" children included)."""
    pid, port, scratch = served.pid, served.port, Path(served._scratch)
    members = group_members(pid)
    assert len(members) >= 2 and _listening(port), members  # the watchdog and transformers serve, at least
    assert {_temporary_dir(p.pid) for p in members} == {str(scratch / "tmp")}  # multiprocessing's pymp-* go there
    served.__exit__(RuntimeError, RuntimeError("a cell failed"), None)
    assert group_members(pid) == []
    assert not scratch.exists()
    assert not _listening(port)
    assert not served.running
