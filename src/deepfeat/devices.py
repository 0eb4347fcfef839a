"""The one device resolver: ``auto`` / ``cpu`` / ``cuda[:N]`` -> the device a job runs on."""

from __future__ import annotations

from .errors import UsageError
from .params import param_error

#: what ``device=`` / ``--device`` accept (plus ``cuda:N``)
DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str, what: str = "device", where: str | None = None) -> str:
    """``device`` when it is a name :func:`resolve_device` takes (checked without importing torch)."""
    if device not in DEVICES and not (isinstance(device, str) and device.startswith("cuda:")):
        raise param_error(what, f"one of {', '.join(DEVICES)} (or cuda:N)", device, where)
    return device


def resolve_device(device: str, what: str = "device") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is visible here, else ``cpu``; ``cuda[:N]`` must exist.

    Raises:
        UsageError: an unknown name, or CUDA asked for on a machine without it.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    check_device(device, what)
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise UsageError(f"--{what} {device} was asked for but no CUDA device is available; use --{what} cpu.")
    return device
