"""The query embedding of an image or a text, for apps that search in SQL (``clipdb embed``).

The vector is made by the query pipeline (:class:`clipdb.query.Searcher`) with the model a
search with the same flags would use, so it matches the rows it will be compared with. Only
when the database has no rows at all for the architecture are the weights the flags name
(its standard weights by default) used; a database that cannot be reached, or several
indexed weights to choose from, are errors, never a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipdb.config import Settings
from clipdb.db import Database
from clipdb.db.registry import Model, models_with_rows
from clipdb.errors import UsageError
from clipdb.query import EncoderOptions, Query, Searcher
from clipdb.search import choose_model


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
    database: Database,
    query: Query,
    options: EncoderOptions | None = None,
) -> QueryEmbedding:
    """L2-normalised embedding of the query's image and/or text (both: their normalised
    mean)."""
    if query.image is None and (query.text is None or not query.text.strip()):
        raise UsageError("give an IMAGE or a non-empty --text")
    query.check()  # a missing or broken file fails before a model loads
    searcher = Searcher(settings, options or EncoderOptions.of(settings), database.connect)
    model = indexed_model(database, settings)
    vector = searcher.vector(query, model)
    encoder = searcher.encoder_for(model)
    return QueryEmbedding(encoder.architecture, encoder.pretrained, vector)


def indexed_model(database: Database, settings: Settings) -> Model | None:
    """The model a search with these settings would use; None only when the architecture has
    no rows at all. Errors (database down, several weights indexed) propagate."""
    with database.connect() as conn:
        if not any(m.architecture == settings.model for m in models_with_rows(conn)):
            return None
        return choose_model(conn, settings)
