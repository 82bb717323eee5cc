"""Where and at what precision a model runs: the choices both backends share.

A leaf of the encoder package (torch imported at call time only), so the torch loader, the
OpenVINO backend, its cache and the backend choice all ask the same questions the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipdb.config import DEVICES, PRECISIONS
from clipdb.errors import ClipdbError, Option, UsageError

if TYPE_CHECKING:
    import torch


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ClipdbError(Option("device", "cuda"), ": no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ClipdbError(Option("device", "mps"), ": Apple MPS is not available")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (about 2x fp32 for ViT-B-32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        raise UsageError(
            Option("precision", "int8"),
            " needs ",
            Option("backend", "openvino"),
            " (or auto on CPU)",
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"
