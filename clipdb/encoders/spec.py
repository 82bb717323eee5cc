"""Model names to a stored identity, validated against open_clip (imported at call time).

:mod:`clipdb.models` answers the common cases without open_clip; this is the full check,
made whenever a model is actually loaded or a name cannot be told apart otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipdb.config import model_config_dirs
from clipdb.errors import ClipdbError, Option, UsageError, WeightsUnavailable
from clipdb.models import (
    RANDOM_WEIGHTS,
    SNAPSHOT_WEIGHTS,
    ModelSpec,
    canonical_model_name,
    file_identity,
    local_checkpoint,
)

# Where weights cannot be had: how to try everything anyway (the CLI adds the exact rerun line).
RANDOM_WEIGHTS_HINT = (
    "for seeded random weights (meaningless results, for a trial run) ",
    Option("pretrained", "none"),
    " or CLIPDB_PRETRAINED=none",
)


def register_model_configs() -> None:
    """Add architectures from ``CLIPDB_MODEL_CONFIGS`` (a dir of open_clip JSON configs)."""
    import open_clip

    for directory in model_config_dirs():
        if Path(directory).is_dir():
            open_clip.add_model_config(directory)


def known_architectures() -> list[str]:
    import open_clip

    register_model_configs()
    return list(open_clip.list_models())


def default_pretrained(architecture: str) -> str:
    """The standard weights of an architecture: OpenAI's where they exist, else the first tag."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if not tags:
        raise WeightsUnavailable(
            f"open_clip has no standard weights for {architecture}; pass ",
            Option("pretrained", "FILE", placeholder=True),
            " (a local checkpoint) or ",
            *RANDOM_WEIGHTS_HINT,
        )
    return "openai" if "openai" in tags else tags[0]


def resolve_model_spec(model: str, pretrained: str | None) -> ModelSpec:
    """Validate names and work out the stored identity without loading anything heavy."""
    architecture = canonical_model_name(model)
    if architecture not in known_architectures():
        raise UsageError(
            f"unknown model {model!r}; use an open_clip architecture such as ViT-B-32, "
            "or ViT-B/32, ViT-B/16, ViT-L/14"
        )
    if pretrained is None:
        return ModelSpec(architecture, default_pretrained(architecture))
    if pretrained.lower() == RANDOM_WEIGHTS:
        return ModelSpec(architecture, RANDOM_WEIGHTS)
    path = local_checkpoint(pretrained)
    if path is not None:
        return ModelSpec(architecture, file_identity(path), checkpoint=path.resolve())
    if Path(pretrained).expanduser().is_dir():
        raise ClipdbError(
            f"{pretrained} holds no open_clip weights ({' or '.join(SNAPSHOT_WEIGHTS)}); "
            "pass a Hugging Face snapshot folder of an open_clip model, or a checkpoint file"
        )
    import open_clip

    if pretrained in open_clip.list_pretrained_tags_by_model(architecture):
        return ModelSpec(architecture, pretrained)
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ClipdbError(f"checkpoint file {pretrained} does not exist")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
    raise UsageError(f"unknown pretrained tag {pretrained!r} for {architecture}; tags: {tags}")
