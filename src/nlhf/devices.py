"""The ``--device`` of every command, checked before any work: a clear error naming the device
and what this machine has, instead of a traceback from inside torch halfway through a run.

``auto`` is CUDA when there is a GPU, else the CPU; ``cpu``; ``cuda`` / ``cuda:N`` (N below the
number of GPUs); ``mps`` (Apple GPUs). Anything else is refused.
"""

from __future__ import annotations

import torch

__all__ = ["available_devices", "resolve_device"]


def available_devices() -> list[str]:
    """The devices this process can use: ``cpu``, ``cuda:0`` ... ``cuda:N-1``, ``mps``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | torch.device | None, flag: str = "--device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, or a ``ValueError`` naming
    ``flag``, the device and the devices available. ``None`` and ``"auto"``: CUDA if available,
    else the CPU."""
    if device is None or str(device).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip()
    available = available_devices()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"{flag} {text!r}: not a device; use auto, cpu, cuda, cuda:N or mps "
            f"(available here: {', '.join(available)})"
        ) from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise ValueError(
                f"{flag} {text}: {why}; available here: {', '.join(available)} "
                "(or --device auto, which takes a GPU when there is one)"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"{flag} {text}: this machine has {count} CUDA device{'s' * (count != 1)}; "
                f"available here: {', '.join(available)}"
            )
        return dev
    if dev.type == "mps":
        if "mps" not in available:
            raise ValueError(
                f"{flag} {text}: no Apple GPU (MPS) here; available here: {', '.join(available)}"
            )
        return dev
    raise ValueError(
        f"{flag} {text}: device type {dev.type!r} is not supported; use auto, cpu, cuda, cuda:N "
        f"or mps (available here: {', '.join(available)})"
    )
