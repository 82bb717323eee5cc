"""The query embedding of an image or a text, for apps that search in SQL (``clipdb embed``).

The model is the one a search with the same flags would use (:func:`clipdb.search.choose_model`)
when the database has rows for it, so the vector matches the rows it will be compared with;
with nothing indexed yet, the weights the flags name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from clipdb.config import Settings
from clipdb.db import Database
from clipdb.errors import ClipdbError, UsageError
from clipdb.search import choose_model, combine_query, load_model_encoder, open_image


@dataclass(frozen=True)
class QueryEmbedding:
    """A unit query vector and the model identity it belongs to."""

    architecture: str
    pretrained: str
    vector: np.ndarray

    def pgvector_literal(self) -> str:
        """``[0.0123,-0.2,...]``: paste into SQL as ``'...'::vector``."""
        return "[" + ",".join(f"{float(v):.8g}" for v in self.vector) + "]"


def embed_query(
    settings: Settings,
    database: Database | None,
    *,
    image: str | os.PathLike[str] | None = None,
    text: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
) -> QueryEmbedding:
    """L2-normalised embedding of ``image`` and/or ``text`` (both: their normalised mean)."""
    if image is None and (text is None or not text.strip()):
        raise UsageError("give an IMAGE or a non-empty --text")
    if image is not None:
        open_image(image)  # a missing or broken file fails before a model loads
    encoder = None
    if database is not None:
        try:
            with database.connect() as conn:
                model = choose_model(conn, settings)
        except ClipdbError:
            model = None  # nothing indexed for these flags: the weights they name
        if model is not None:
            encoder = load_model_encoder(model, settings, device, precision, backend)
    if encoder is None:
        from clipdb.encoders import load_encoder

        encoder = load_encoder(
            settings.model,
            settings.pretrained,
            device=device,
            precision=precision,
            backend=backend,
        )
    image_vector = text_vector = None
    if image is not None:
        image_vector = encoder.encode_pil([open_image(image, encoder)])[0]
    if text is not None:
        text_vector = encoder.encode_texts([text])[0]
    vector = combine_query(image=image_vector, text=text_vector)
    return QueryEmbedding(encoder.architecture, encoder.pretrained, vector)
