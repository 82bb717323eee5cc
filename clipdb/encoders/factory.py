"""The backend choice: :func:`load_encoder` returns an :class:`~clipdb.encoders.Encoder`.

``backend`` auto is OpenVINO on CPU and torch on CUDA/MPS. Nothing heavy is imported here:
a load from a verified OpenVINO cache imports neither open_clip nor torch. Tests use the same
loader with tiny architectures from ``CLIPDB_MODEL_CONFIGS`` and ``pretrained="none"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from clipdb.config import BACKENDS, PRECISIONS
from clipdb.encoders.device import pick_device
from clipdb.encoders.openvino import load as load_openvino
from clipdb.encoders.openvino import load_cached
from clipdb.encoders.openvino_background import load_in_background
from clipdb.encoders.protocol import Encoder
from clipdb.encoders.spec import resolve_model_spec
from clipdb.encoders.torch import load_torch
from clipdb.errors import ClipdbError, Option, UsageError
from clipdb.models import RANDOM_WEIGHTS, ModelSpec, quick_model_spec

BACKGROUND_MODES = ("off", "wait", "torch")


def load_encoder(
    model: str,
    pretrained: str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    background: str = "off",
) -> Encoder:
    """Load a CLIP model for inference (hub cache, local checkpoint, or seeded random weights).

    ``backend`` auto is OpenVINO on CPU and torch on CUDA/MPS; when OpenVINO is missing or
    fails, one line says why and torch encodes instead. ``background`` (ingest): when the
    OpenVINO IR must first be converted, ``wait`` converts in a thread while the caller decodes
    and the first encode waits for it; ``torch`` also encodes with the torch model until then.
    """
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}")
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if backend == "openvino" and device in ("cuda", "mps"):
        raise UsageError(
            Option("backend", "openvino"),
            " runs on the CPU; it cannot use ",
            Option("device", device),
        )
    if backend == "torch" and precision == "int8":
        raise UsageError(Option("precision", "int8"), " needs ", Option("backend", "openvino"))
    if backend == "auto":
        cpu = device == "cpu" or (device == "auto" and not _accelerator_likely())
        backend = "openvino" if cpu or pick_device(device).type == "cpu" else "torch"
    if backend == "openvino":
        # A verified cache proves the names were valid when it was built: no open_clip, no torch.
        quick = quick_model_spec(model, pretrained)
        cached = load_cached(quick, precision) if quick is not None else None
        if cached is not None:
            _warn_if_random(quick)
            return cached
    spec = resolve_model_spec(model, pretrained)
    _warn_if_random(spec)
    if backend == "openvino":
        try:
            if background != "off":
                return load_in_background(spec, precision, meanwhile=background == "torch")
            return load_openvino(spec, precision)
        except ClipdbError:
            raise
        except Exception as err:  # ImportError, or OpenVINO failing to read/compile
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"warning: OpenVINO unavailable ({reason}); encoding with torch", file=sys.stderr)
            if precision == "int8":
                precision = "auto"
    return load_torch(spec, device, precision)


def _warn_if_random(spec: ModelSpec | None) -> None:
    if spec is not None and spec.pretrained == RANDOM_WEIGHTS:
        print(
            f"warning: {spec.architecture} with random weights (--pretrained none): "
            "results are meaningless except for testing",
            file=sys.stderr,
        )


def _accelerator_likely() -> bool:
    """An NVIDIA driver or Apple silicon: only then is torch imported to ask for cuda/mps."""
    import platform

    if Path("/proc/driver/nvidia/version").exists():
        return True
    return sys.platform == "darwin" and platform.machine() == "arm64"
