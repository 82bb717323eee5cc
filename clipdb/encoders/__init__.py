"""CLIP encoders: open_clip models run by torch or OpenVINO, behind one protocol.

The public entry points: :func:`load_encoder` (choose a backend, load a model) returning an
:class:`Encoder`, and :func:`resolve_model_spec` (validated names to the stored identity).
Importing this package imports neither torch nor open_clip.

Modules, each importing only those listed before it (no cycle, tests/test_import_graph.py):
``device`` (device and precision choice), ``spec`` (names against open_clip), ``protocol``
(:class:`Encoder`), ``tokenizer`` (CLIP BPE without torch), ``torch`` (:class:`ClipEncoder`,
``load_torch``), ``openvino_cache`` (the IR cache), ``openvino`` (the OpenVINO encoder),
``openvino_background`` (a first conversion in a thread), ``factory`` (:func:`load_encoder`).
"""

from __future__ import annotations

from clipdb.encoders.factory import load_encoder
from clipdb.encoders.protocol import Encoder
from clipdb.encoders.spec import register_model_configs, resolve_model_spec

__all__ = ["Encoder", "load_encoder", "register_model_configs", "resolve_model_spec"]
