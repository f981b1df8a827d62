"""One torch thread in every toy test: on a busy 2-core machine two threads thrash, ten times slower
(``benchmarks/RESULTS.md``, *Toy training under contention*); the count is restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
