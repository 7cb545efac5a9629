"""Shared test set-up.

Every torch model in the suite is tiny: intra-op threads only add spin-waiting (up to 20x slower
measured on a busy two-core machine), so the whole session runs torch on one thread.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
