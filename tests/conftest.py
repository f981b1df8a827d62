"""Shared fixtures: the tiny random model, deterministic pictures, and their encodings."""

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import anatomy  # noqa: E402
from anatomy.inputs import demo_image, encode  # noqa: E402

# Under pytest-xdist (`-n N`) the workers share the cores: each gets its share of torch threads, so that N workers
# with every core each do not wait on one another.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tiny
    model's matrices gain nothing from a second thread, and on a 2-core machine shared with other processes
    two threads waiting for each other made small forward passes several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny():
    return anatomy.load("tiny")


@pytest.fixture(scope="session")
def picture():
    return demo_image(336, 448)


@pytest.fixture(scope="session")
def batch(tiny, picture):
    return encode(tiny, picture)


@pytest.fixture(scope="session")
def reference(tiny, batch):
    """transformers' own outputs for ``batch``, with every hidden state."""
    with torch.no_grad():
        return tiny.model(**batch, output_hidden_states=True)


@pytest.fixture
def silent():
    """A socket on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers; ``(url, listener)``.
    ``select`` on the listener tells when a connection waits in the backlog: a request has reached it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", listener


@pytest.fixture
def silent_url(silent):
    return silent[0]
