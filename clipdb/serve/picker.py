"""The indexed models a page may pick besides the served one, each with its own encoder.

The served model's encoder stays loaded; another model's is built the first time a request
names it and then kept, but only the most recently used few are (each is a whole CLIP model
in memory), so a client naming every model in turn cannot grow the server without bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import psycopg

from clipdb.db.model_admin import model_rows
from clipdb.db.registry import Model, models_with_rows
from clipdb.errors import UsageError
from clipdb.models_cli import model_name, models_named, row_json
from clipdb.query import Searcher

# Encoders of models other than the served one kept at once: with the served one's, two.
OTHER_ENCODERS = 1


class UnknownModel(UsageError):
    """A request named a model that has no indexed images here (HTTP 422)."""


def indexed_models(conn: psycopg.Connection[Any], served: Model | None) -> list[dict[str, Any]]:
    """Every model with rows as ``clipdb models --json`` lists it, plus ``serving``: whether
    it is the one that answers a request naming no model."""
    return [{**row_json(row), "serving": row.model == served} for row in model_rows(conn)]


def named_model(conn: psycopg.Connection[Any], name: str) -> Model:
    """The indexed model ``name`` means: ``architecture/pretrained`` (as ``clipdb models``
    names it), or an architecture indexed with one set of weights."""
    with_rows = models_with_rows(conn)
    matches = models_named(with_rows, name)
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(model_name(m) for m in with_rows) or "none"
    if matches:
        raise UnknownModel(f"model {name!r} names several indexed models; use one of {known}")
    raise UnknownModel(f"no indexed model {name!r}; indexed: {known}")


class OtherSearchers:
    """A :class:`Searcher` per picked model, built on first use, the ``keep`` most recently
    used kept (an evicted one is dropped with its encoder once its requests finish)."""

    def __init__(self, make: Callable[[], Searcher], keep: int = OTHER_ENCODERS) -> None:
        self._make = make
        self._keep = keep
        self._searchers: OrderedDict[int, Searcher] = OrderedDict()
        self._lock = threading.Lock()

    def searcher_for(self, model: Model) -> Searcher:
        with self._lock:
            searcher = self._searchers.get(model.model_id)
            if searcher is None:
                # Building one does no I/O: the encoder loads on its first query, outside
                # this lock (Searcher.encoder_for loads it once under its own).
                searcher = self._searchers[model.model_id] = self._make()
            self._searchers.move_to_end(model.model_id)
            while len(self._searchers) > self._keep:
                self._searchers.popitem(last=False)
            return searcher

    @property
    def loaded(self) -> list[int]:
        """Ids of the models whose searchers are kept, least recently used first."""
        with self._lock:
            return list(self._searchers)
