"""Hugging Face style snapshot folders of tiny open_clip models, made offline in the test.

A real snapshot (e.g. timm/ViT-B-16-SigLIP2) holds ``open_clip_config.json`` (with the image
preprocessing), ``open_clip_model.safetensors``, ``tokenizer.json`` and
``tokenizer_config.json``; these hold the same files for a tiny random-init model, with a
tokenizer trained here by the ``tokenizers`` library (no hub access).
"""

from __future__ import annotations

import json
from pathlib import Path

SIGLIP_PREPROCESS = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "squash",
}
CORPUS = [
    "a red car on a street",
    "a photo of a cat sleeping on a sofa",
    "mountains under snow at sunset",
    "two dogs playing in the park",
    "a bowl of fruit on a wooden table",
    "ein rotes auto auf der strasse",
    "un chat qui dort sur le canape",
]


def train_tokenizer(folder: Path, vocab_size: int) -> None:
    """A small BPE tokenizer with SigLIP's layout: ``<pad>`` id 0, ``</s>`` appended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))


def make_snapshot(folder: Path, architecture: str, *, seed: int = 1) -> Path:
    """A snapshot folder of ``architecture`` with seeded random weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clipdb.encoders import register_model_configs

    register_model_configs()  # CLIPDB_MODEL_CONFIGS: the tests' tiny architectures
    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(architecture, pretrained=None)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": SIGLIP_PREPROCESS})
    )
    train_tokenizer(folder, int(config["text_cfg"]["vocab_size"]))
    return folder
