"""The curated models clipdb supports and tests (``clipdb models presets``).

Plain data, importable without torch or open_clip: the names are open_clip 3.3's, the
figures are published ones (with their source), the parameter counts are open_clip's models
counted once. Whether the weights are already on this machine is asked of the Hugging Face
cache, file by file, without any network access.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

OPENCLIP_RETRIEVAL = "open_clip docs/openclip_retrieval_results.csv (MSCOCO image retr. R@1)"
SIGLIP2_PAPER = "SigLIP 2 (Tschannen et al. 2025, arXiv:2502.14786), COCO T->I R@1"
# The files open_clip reads from a model's Hugging Face repository (either one).
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class Preset:
    """One supported model: what it is for, its size, its published quality, its licence."""

    name: str  # the name `clipdb models presets` lists and --model takes
    architecture: str  # open_clip's architecture name
    pretrained: str  # open_clip's weights tag
    purpose: str
    image_size: int
    dim: int
    params_m: float | None  # millions of parameters, both towers (None: not published)
    coco_t2i_r1: str  # published COCO text->image recall@1, in %
    source: str
    licence: str
    commercial_use: bool
    hf_repo: str  # where open_clip downloads the weights from
    multilingual: bool = False
    needs: str = ""  # an extra Python package the text tower needs, if any

    @property
    def model_argument(self) -> tuple[str, str]:
        """``--model`` and ``--pretrained`` values that index with this preset."""
        return self.architecture, self.pretrained


PRESETS: tuple[Preset, ...] = (
    Preset(
        "ViT-B-32",
        "ViT-B-32",
        "openai",
        "default (English; fastest)",
        224,
        512,
        151.3,
        "30.4",
        OPENCLIP_RETRIEVAL,
        "MIT",
        True,
        "timm/vit_base_patch32_clip_224.openai",
    ),
    Preset(
        "ViT-B-32-SigLIP2-256",
        "ViT-B-32-SigLIP2-256",
        "webli",
        "better quality at ViT-B/32 image cost",
        256,
        768,
        376.9,
        "47.2",
        SIGLIP2_PAPER,
        "Apache-2.0",
        True,
        "timm/ViT-B-32-SigLIP2-256",
        multilingual=True,
    ),
    Preset(
        "ViT-B-16-SigLIP2",
        "ViT-B-16-SigLIP2",
        "webli",
        "best quality (4x ViT-B/32's image compute)",
        224,
        768,
        375.2,
        "52-53",
        SIGLIP2_PAPER,
        "Apache-2.0",
        True,
        "timm/ViT-B-16-SigLIP2",
        multilingual=True,
    ),
    Preset(
        "xlm-roberta-base-ViT-B-32",
        "xlm-roberta-base-ViT-B-32",
        "laion5b_s13b_b90k",
        "multilingual (permissive licence)",
        224,
        512,
        366.1,
        "37.8",
        OPENCLIP_RETRIEVAL,
        "MIT",
        True,
        "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k",
        multilingual=True,
        needs="transformers",
    ),
    Preset(
        "ViT-L-14",
        "ViT-L-14",
        "openai",
        "large (English; ~12x ViT-B/32's image compute)",
        224,
        768,
        427.6,
        "36.5",
        OPENCLIP_RETRIEVAL,
        "MIT",
        True,
        "timm/vit_large_patch14_clip_224.openai",
    ),
    Preset(
        "nllb-clip-base-siglip",
        "nllb-clip-base-siglip",
        "v1",
        "multilingual, 200 languages",
        384,
        768,
        None,
        "n/a",
        "visheratin/nllb-clip-base-siglip model card",
        "CC-BY-NC-4.0 (non-commercial)",
        False,
        "visheratin/nllb-clip-base-siglip",
        multilingual=True,
        needs="transformers",
    ),
)

DEFAULT_PRESET = PRESETS[0]
# The permissive multilingual presets a query in another script is pointed to.
MULTILINGUAL_PRESETS = (PRESETS[3], PRESETS[1])


def preset(name: str) -> Preset | None:
    return next((p for p in PRESETS if p.name == name), None)


def preset_for(architecture: str, pretrained: str | None) -> Preset | None:
    """The preset these weights are, if any (``pretrained`` None: the architecture's first)."""
    for entry in PRESETS:
        if entry.architecture == architecture and pretrained in (None, entry.pretrained):
            return entry
    return None


def cached(entry: Preset) -> bool:
    """Whether the Hugging Face cache holds the preset's weights (no network access)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(entry.hf_repo, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def preset_rows() -> list[dict[str, Any]]:
    """Every preset as a JSON-ready dict, with ``cached``."""
    return [dict(asdict(entry), cached=cached(entry)) for entry in PRESETS]


def format_presets(rows: list[dict[str, Any]]) -> str:
    """The table ``clipdb models presets`` prints."""
    header = ("NAME", "FOR", "SIZE", "DIM", "PARAMS", "COCO R@1", "LICENCE", "CACHED")
    lines = [
        (
            row["name"],
            row["purpose"],
            f"{row['image_size']}px",
            str(row["dim"]),
            "?" if row["params_m"] is None else f"{row['params_m']:.0f}M",
            row["coco_t2i_r1"],
            row["licence"],
            "yes" if row["cached"] else "no",
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = [
        "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(line)).rstrip()
        for line in [header, *lines]
    ]
    out.append("")
    out.append("COCO R@1: published text->image recall@1 (%); sources:")
    for source in dict.fromkeys(row["source"] for row in rows):
        out.append(f"  {source}")
    needs = [row["name"] for row in rows if row["needs"]]
    if needs:
        out.append(
            f"{', '.join(needs)}: the text tower needs the 'transformers' package "
            "(pip install 'clipdb-pg[multilingual]')"
        )
    out.append("index with one: clipdb ingest --model NAME [--pretrained FILE|DIR] PATH")
    return "\n".join(out)


# Unicode scripts an English-only (CLIP BPE, English captions) model cannot read: a query
# mostly in one of these finds noise. Latin, digits and punctuation are read.
_UNREAD_SCRIPTS = (
    "CJK",
    "HIRAGANA",
    "KATAKANA",
    "HANGUL",
    "ARABIC",
    "HEBREW",
    "CYRILLIC",
    "GREEK",
    "DEVANAGARI",
    "BENGALI",
    "THAI",
    "TAMIL",
    "TELUGU",
    "GEORGIAN",
    "ARMENIAN",
    "ETHIOPIC",
)


def unreadable_script(text: str) -> str | None:
    """The first script in ``text`` an English-only model cannot read (e.g. "CJK"), if its
    letters are at least half of the letters."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    counts: dict[str, int] = {}
    for char in letters:
        name = unicodedata.name(char, "")
        for script in _UNREAD_SCRIPTS:
            if name.startswith(script):
                counts[script] = counts.get(script, 0) + 1
                break
    if not counts or 2 * sum(counts.values()) < len(letters):
        return None
    return max(counts, key=lambda script: counts[script])


def english_only(architecture: str) -> bool:
    """Whether the architecture's text tower reads English only: CLIP's BPE vocabulary
    (open_clip's plain CLIP text config), i.e. not SigLIP's or an HF text tower."""
    entry = preset_for(architecture, None)
    if entry is not None:
        return not entry.multilingual
    # SigLIP 2 and the i18n SigLIPs were trained on many languages; SigLIP 1 on English.
    words = ("siglip2", "i18n", "xlm", "nllb", "mt5", "worldwide")
    return not any(word in architecture.lower() for word in words)


def language_warning(architecture: str, text: str) -> str | None:
    """One line when ``text`` is in a script ``architecture`` cannot read, naming a preset."""
    script = unreadable_script(text)
    if script is None or not english_only(architecture):
        return None
    return (
        f"{architecture} reads English only; this query is mostly {script.title()} text, so "
        "results will be poor; a multilingual model reads it: clipdb ingest --model "
        f"{' or '.join(p.name for p in MULTILINGUAL_PRESETS)} (clipdb models presets)"
    )
