"""Where models run: one rule for choosing a torch device, shared by training, inference and evaluation."""

from __future__ import annotations

import torch

__all__ = ["check_device_name", "resolve_device"]

_SUPPORTED = ("cpu", "cuda", "mps")


def check_device_name(device: str | None) -> str | None:
    """Check that ``device`` names a device medvl3d can run on (``auto``, ``cpu``, ``cuda``, ``cuda:N``,
    ``mps``) without asking whether it is present here; returns it unchanged.

    Raises:
        ValueError: an unknown or unsupported device string (naming it).
    """
    if device is None or device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {str(device)!r} is not a torch device (use auto, cpu, cuda or cuda:N)"
        ) from None
    if dev.type not in _SUPPORTED:
        raise ValueError(f"device {str(device)!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def resolve_device(device: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (or None): this process's CUDA device if any, else CPU; otherwise ``torch.device(device)``.

    Raises:
        ValueError: an unknown device string, or CUDA requested where there is none (naming it).
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    check_device_name(str(device) if isinstance(device, torch.device) else device)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev
