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


OPENAI_PREPROCESS = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
XLMR_CORPUS = [
    *CORPUS,
    "红色的汽车在街上",
    "一只猫在沙发上睡觉",
    "سيارة حمراء في الشارع",
    "две собаки играют в парке",
]


def make_xlmr_tower(folder: Path, architecture: str, configs: Path) -> dict[str, object]:
    """A tiny XLM-RoBERTa text tower in ``folder`` (its Hugging Face config and an XLM-R
    layout tokenizer: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, Unigram over
    Metaspace) and the open_clip config of ``architecture`` in ``configs`` naming it, as
    open_clip's xlm-roberta-base-ViT-B-32 names ``xlm-roberta-base``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig

    folder.mkdir(parents=True, exist_ok=True)
    configs.mkdir(parents=True, exist_ok=True)
    XLMRobertaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,  # as XLM-R's 514: more than the tokenizer's context
    ).save_pretrained(folder)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(XLMR_CORPUS * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    config: dict[str, object] = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
        },
        "text_cfg": {
            "hf_model_name": str(folder),
            "hf_tokenizer_name": str(folder),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "mean_pooler",
            "context_length": 16,
        },
    }
    (configs / f"{architecture}.json").write_text(json.dumps(config))
    return config


def make_hf_text_snapshot(folder: Path, architecture: str, tower: Path, *, seed: int = 1) -> Path:
    """A snapshot folder of ``architecture`` (a Hugging Face text tower made by
    :func:`make_xlmr_tower` in ``tower``): the whole model's weights, text tower included."""
    import shutil

    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(architecture, pretrained=None, pretrained_hf=False)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = open_clip.get_model_config(architecture)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": OPENAI_PREPROCESS})
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tower / name, folder / name)
    return folder
