"""Torch towers -> OpenVINO IR files: what a cache folder is converted with.

Why not ``openvino.convert_model`` alone: for ViT-B-32 it took 3.0 s (image) and 4.1 s (text)
on 2 cores, most of it work clipdb does not need. It re-runs the traced model to check the
trace (1.1 s), builds an empty pre-processing pass (0.6 s) and sends usage telemetry to Intel
(0.45 s on a machine without internet, and a network request nobody asked for). The PyTorch
frontend it wraps, called directly with the same MOC transformations, gives the same graph
(438 ops, outputs bit-identical) in 1.1 s and 1.4 s. ``convert_model`` stays the fallback for
an OpenVINO whose internals differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipdb.encoders.hf_tokenizer import LazyHubTokenizer
from clipdb.encoders.torch import encode_text_prefix


def tower_modules(
    clip_model: Any, image_size: tuple[int, int], context: int, trim: bool
) -> dict[str, tuple[Any, Any, list[int]]]:
    """Each tower as a torch module of its own, with an example input and the input shape
    (-1: any size) to convert it with. ``trim``: the text tower takes any number of tokens."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels).float()  # type: ignore[no-any-return]

    class TextTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            if trim:  # any number of positions: callers cut the padding (encode_texts)
                return encode_text_prefix(self.model, tokens).float()
            return self.model.encode_text(tokens).float()  # type: ignore[no-any-return]

    return {
        "image": (ImageTower(clip_model), torch.zeros(1, 3, *image_size), [-1, 3, *image_size]),
        "text": (
            TextTower(clip_model),
            torch.zeros(1, context, dtype=torch.int64),
            [-1, -1 if trim else context],
        ),
    }


def convert_module(module: Any, example: Any, shape: list[int]) -> Any:
    """``module`` traced on ``example`` as an OpenVINO model whose input has ``shape``."""
    import openvino as ov

    try:
        from openvino._offline_transformations import (
            apply_fused_names_cleanup,
            apply_moc_transformations,
        )
        from openvino.frontend import FrontEndManager
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
    except ImportError:  # another OpenVINO layout: the public converter, slower
        return ov.convert_model(module, example_input=example, input=[shape])
    decoder = TorchScriptPythonDecoder(
        module, example_input=(example,), trace_kwargs={"check_trace": False}
    )
    frontend = FrontEndManager().load_by_framework("pytorch")
    graph = frontend.load(decoder)
    graph.set_partial_shape(graph.get_place_by_input_index(0), ov.PartialShape(shape))
    model = frontend.convert(graph)
    # What convert_model applies after the frontend (its MOC step): 1,162 ops -> 438.
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    apply_fused_names_cleanup(model)
    return model


def convert_tower(module: Any, example: Any, shape: list[int], weights: str) -> Any:
    """One tower as an OpenVINO model; ``weights`` int8: its weights compressed."""
    import warnings

    import torch

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches: not for users
        converted = convert_module(module, example, shape)
    if weights == "int8":
        import logging

        import nncf

        nncf.set_log_level(logging.ERROR)  # its per-layer tables are not for users
        converted = nncf.compress_weights(converted)
    return converted


def save_towers(towers: dict[str, tuple[Any, Any, list[int]]], weights: str, staging: Path) -> None:
    """Convert each tower and save it as ``<tower>.xml``/``.bin`` in ``staging``."""
    import openvino as ov

    for tower, (module, example, shape) in towers.items():
        converted = convert_tower(module, example, shape, weights)
        ov.save_model(converted, staging / f"{tower}.xml", compress_to_fp16=False)


def tokenizer_kind(tokenizer: Any) -> str:
    """ "clip-bpe" when :mod:`clipdb.encoders.tokenizer` gives the same ids (open_clip's plain
    CLIP BPE)."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    if isinstance(tokenizer, LazyHubTokenizer):
        return "hf"
    plain = (
        type(tokenizer) is SimpleTokenizer
        and tokenizer.clean_fn is _clean_lower
        and tokenizer.reduction_fn is None
    )
    return "clip-bpe" if plain else "open_clip"
