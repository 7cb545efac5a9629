"""The one loader for causal-LM checkpoints (policies, references, SFT starts, tournament pools).

Every command loads a policy through :func:`load_causal_lm`, which first runs
:func:`check_causal_lm`: the path exists and is a directory, ``config.json`` parses and names a
causal-LM architecture, it is not a preference/reward-model directory, the weight files are
present and intact (safetensors header and size, or a loadable ``.bin``), the weights are not
quantized, and the tokenizer loads, has tokens, has an EOS token and fits the model's vocabulary.
Each failure is a ``ValueError`` naming what was being loaded, the path and the file.

Precision (``dtype``): weights that will be trained are loaded as float32 master copies
whatever the checkpoint's dtype (bf16 weights cannot absorb small optimizer steps);
``dtype="auto"`` keeps the stored dtype, for frozen models (a reference policy, a judge) that may
stay in half precision to save memory. :func:`stored_dtype` reads the checkpoint's dtype, e.g. to
save a trained policy in the dtype it came in.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "first_line",
    "WEIGHT_FILES",
    "DTypeName",
    "check_causal_lm",
    "check_weights",
    "looks_like_hub_id",
    "load_causal_lm",
    "load_tokenizer",
    "stored_dtype",
    "resolve_dtype",
    "quiet_loading",
    "save_causal_lm",
]

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the marker file of preference / reward models written by `nlhf train-preference` (SFT
# policies carry one too, with kind "policy")
_SCORING_MARKER = "nlhf_model.json"


def _is_scoring_model(path: Path) -> bool:
    """Whether ``path`` holds an ``nlhf_model.json`` marker of a kind other than "policy"."""
    marker = path / _SCORING_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("kind") != "policy"
    except (OSError, ValueError, AttributeError):
        return True


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters)."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _read_config(path: Path, what: str) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise ValueError(f"{what} ({path}): no config.json, not a Hugging Face checkpoint")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} ({path}): corrupted config.json ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{what} ({path}): config.json is not a JSON object")
    return config


def stored_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in (``config.json``), float32 if unstated."""
    config = _read_config(Path(path), "checkpoint")
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return _DTYPES.get(str(name).replace("torch.", ""), torch.float32)


def resolve_dtype(dtype: DTypeName | torch.dtype, path: str | Path) -> torch.dtype:
    """``"auto"`` -> the checkpoint's stored dtype; a name -> that torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return stored_dtype(path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
    return _DTYPES[dtype]


def _check_weight_file(file: Path) -> None:
    if file.name.endswith(".index.json"):
        index = json.loads(file.read_text())
        for shard in sorted(set(index["weight_map"].values())):
            if not (file.parent / shard).is_file():
                raise FileNotFoundError(f"missing shard {shard}")
            _check_weight_file(file.parent / shard)
    elif file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:  # validates header and file size
            if not list(f.keys()):
                raise ValueError("no tensors")
    else:
        torch.load(file, map_location="cpu", weights_only=True, mmap=True)


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def looks_like_hub_id(name: str | Path) -> bool:
    """Whether ``name`` reads as a Hugging Face hub repository id (``org/name`` or ``name``)
    rather than a local path: no leading ``/``, ``.`` or ``~``, at most one ``/``."""
    text = str(name)
    return bool(_HUB_ID.fullmatch(text)) and not text.endswith((".json", ".yaml", ".safetensors"))


def load_tokenizer(
    path: str | Path, what: str = "tokenizer", *, need_eos: bool = True, hub: bool = False
):
    """``AutoTokenizer`` from ``path``, checked: it loads and has tokens, and (``need_eos``) an
    EOS token. ``hub=True`` lets a name that is not a local path but looks like a hub id
    (:func:`looks_like_hub_id`) load from the Hugging Face hub."""
    from transformers import AutoTokenizer

    path = Path(path)
    from_hub = hub and not path.exists() and looks_like_hub_id(path)
    if not path.exists() and not from_hub:
        raise ValueError(f"{what} ({path}): does not exist")
    files = (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "tokenizer.model",
        "vocab.txt",
    )
    if path.is_dir() and not any((path / f).is_file() for f in files):
        raise ValueError(f"{what} ({path}): no tokenizer files ({', '.join(files)})")
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - any failure means a bad tokenizer
        where = " (not a local path; tried the Hugging Face hub)" if from_hub else ""
        raise ValueError(
            f"{what} ({path}): tokenizer does not load{where} ({first_line(err)})"
        ) from None
    if len(tokenizer) == 0:
        raise ValueError(f"{what} ({path}): the tokenizer has an empty vocabulary")
    if need_eos and tokenizer.eos_token_id is None:
        raise ValueError(f"{what} ({path}): the tokenizer has no EOS token, so responses never end")
    return tokenizer


def check_weights(path: str | Path, what: str) -> None:
    """``path`` is a directory with a readable ``config.json`` and intact weight files
    (safetensors header and size, shards, or a loadable ``.bin``); else a ``ValueError``
    naming ``what``, the path and the file. Any architecture (causal LM or not)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} ({path}): checkpoint does not exist")
    if not path.is_dir():
        raise ValueError(f"{what} ({path}): must be a directory (save_pretrained output)")
    _read_config(path, what)
    _check_weight_files(path, what)


def _check_weight_files(path: Path, what: str) -> None:
    """The weight files of directory ``path`` are present and intact (see :func:`check_weights`)."""
    weights = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    weights += sorted(path.glob("model-*.safetensors"))
    if not weights:
        raise ValueError(f"{what} ({path}): no weights ({' or '.join(WEIGHT_FILES[::2])})")
    for file in weights:
        try:
            _check_weight_file(file)
        except Exception as err:  # noqa: BLE001
            raise ValueError(
                f"{what} ({path}): corrupted weight file {file.name} ({first_line(err)})"
            ) from None


def check_causal_lm(path: str | Path, what: str = "policy", tokenizer: bool = True):
    """Fail fast, without loading the weights, unless ``path`` is a loadable causal-LM
    checkpoint (see the module docstring). Returns the checked tokenizer; ``tokenizer=False``
    skips the tokenizer checks and returns None."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if str(path).endswith(".gguf"):
        raise ValueError(
            f"{what} ({path}): a GGUF file is not a trainable checkpoint; convert it to a "
            "Hugging Face directory first (see nlhf.models.pretrained for an example)"
        )
    if not path.exists():
        raise ValueError(f"{what} ({path}): checkpoint does not exist")
    if not path.is_dir():
        raise ValueError(f"{what} ({path}): must be a directory (save_pretrained output)")
    if _is_scoring_model(path):
        raise ValueError(
            f"{what} ({path}): this is a preference/reward-model directory ({_SCORING_MARKER}), "
            "not a policy (causal language model) checkpoint"
        )
    raw = _read_config(path, what)
    quant = raw.get("quantization_config")
    if isinstance(quant, dict):
        method = quant.get("quant_method", "unknown")
        raise ValueError(
            f"{what} ({path}): the weights are quantized ({method}); nlhf trains and samples "
            "float weights: dequantize the checkpoint first"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{what} ({path}): corrupted config.json ({first_line(err)})") from None
    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as err:  # noqa: BLE001
        raise ValueError(
            f"{what} ({path}): not a causal language model ({first_line(err)})"
        ) from None
    _check_weight_files(path, what)
    if not tokenizer:
        return None
    tok = load_tokenizer(path, what)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and len(tok) > vocab:
        raise ValueError(
            f"{what} ({path}): the tokenizer has {len(tok)} tokens but the model's "
            f"vocabulary has only {vocab}"
        )
    return tok


def load_causal_lm(
    path: str | Path,
    what: str = "policy",
    *,
    dtype: DTypeName | torch.dtype = "float32",
    device: str | torch.device | None = None,
    with_tokenizer: bool = True,
):
    """``(model, tokenizer)`` from a checked causal-LM checkpoint, the model in eval mode.

    ``dtype``: ``"float32"`` (default: trainable master weights), ``"auto"`` (as stored, for
    frozen models), or ``"bfloat16"`` / ``"float16"``. ``with_tokenizer=False`` returns
    ``(model, None)`` and skips the tokenizer checks. Errors are ``ValueError`` naming ``what``.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = check_causal_lm(path, what, tokenizer=with_tokenizer)
    torch_dtype = resolve_dtype(dtype, path)
    try:
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{what} ({path}): cannot load ({first_line(err)})") from None
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


@contextlib.contextmanager
def quiet_loading():
    """No "Loading weights" progress bars from transformers (e.g. under our own bars)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_causal_lm(
    model,
    path: str | Path,
    dtype: DTypeName | torch.dtype | None = None,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    tokenizer=None,
) -> Path:
    """Write ``model`` as a standard Hugging Face checkpoint with its floating-point weights
    in ``dtype`` (a torch dtype or a name; None or ``"auto"``: as held).

    Training keeps float32 master weights; this writes them in the dtype the user wants (e.g.
    the dtype the input checkpoint was stored in, :func:`stored_dtype`) without casting the
    model itself: the cast copy is made tensor by tensor (tied weights stay tied), and
    ``config.json`` records the dtype written. ``state_dict`` (optional) replaces the model's
    own, e.g. one gathered by accelerate from a sharded model.
    """
    path = Path(path)
    target = None if dtype in (None, "auto") else resolve_dtype(dtype, path)
    if state_dict is None:
        state_dict = model.state_dict()
    if target is not None:
        cast: dict[tuple, torch.Tensor] = {}  # one copy per storage: tied weights stay tied
        out = {}
        for name, tensor in state_dict.items():
            if not tensor.is_floating_point() or tensor.dtype == target:
                out[name] = tensor
                continue
            key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
            if key not in cast:
                cast[key] = tensor.detach().to(target)
            out[name] = cast[key]
        state_dict = out
    model.save_pretrained(str(path), state_dict=state_dict)
    if target is not None:
        config_file = path / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["dtype"] = str(target).removeprefix("torch.")
        config.pop("torch_dtype", None)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path
