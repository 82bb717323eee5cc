"""The one query pipeline: a :class:`Query` becomes a unit vector, then a top-k search.

The CLI (``clipdb search``), ``ClipDB``, the web server and ``clipdb embed`` all go through a
:class:`Searcher`: the same model choice (:func:`clipdb.search.choose_model`), the same encoder
loading (:class:`EncoderOptions`), the same vector maths (:func:`combine_query`) and the same
search (:func:`clipdb.search.search`, the SQL top-k). An indexed image (``like``) needs no
model: its stored embedding is the query, so that path never imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from clipdb.config import DEFAULT_MODEL, Settings
from clipdb.db import queries
from clipdb.db.queries import Hit
from clipdb.db.registry import Model
from clipdb.db.text import check_text_query, has_text, search_text
from clipdb.errors import ClipdbError, Option, UsageError
from clipdb.search import SearchOptions, choose_model, open_image, run_batch, search

if TYPE_CHECKING:
    from PIL import Image

    from clipdb.encoders import Encoder

DEFAULT_WEIGHTS = (1.0, 1.0, 0.5)  # image, text, minus

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


@dataclass(frozen=True)
class Weights:
    """How much each part of a combined query counts (only the ratios matter)."""

    image: float = DEFAULT_WEIGHTS[0]
    text: float = DEFAULT_WEIGHTS[1]
    minus: float = DEFAULT_WEIGHTS[2]

    @classmethod
    def parse(cls, value: str) -> Weights:
        """``"IMAGE,TEXT"`` or ``"IMAGE,TEXT,MINUS"``, non-negative numbers."""
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            raise UsageError(f"--weights {value!r}: expected numbers like 0.7,0.3") from None
        if len(numbers) not in (2, 3) or any(not np.isfinite(n) or n < 0 for n in numbers):
            raise UsageError(
                f"--weights {value!r}: expected two or three non-negative numbers "
                "(IMAGE,TEXT[,MINUS])"
            )
        return cls(*numbers)


def normalise(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise ClipdbError("the combined query is (almost) zero; change --weights or --minus")
    return (vector / norm).astype(np.float32)


def combine_query(
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
    minus: Sequence[np.ndarray] = (),
    weights: Weights = Weights(),
) -> np.ndarray:
    """``normalise(Wi*image + Wt*text - Wm*mean(minus))``, each part a unit vector first."""
    parts = []
    if image is not None:
        parts.append(weights.image * normalise(image))
    if text is not None:
        parts.append(weights.text * normalise(text))
    if not parts:
        raise UsageError("a query needs an image, --like or --text")
    if minus:
        away = normalise(np.mean([normalise(m) for m in minus], axis=0))
        parts.append(-weights.minus * away)
    return normalise(np.sum(parts, axis=0))


@dataclass(frozen=True)
class EncoderOptions:
    """Which weights to load and how to run them: the same options for every query builder."""

    model: str = DEFAULT_MODEL
    pretrained: str | None = None  # None: the architecture's standard weights
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"

    @classmethod
    def of(
        cls,
        settings: Settings,
        *,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
    ) -> EncoderOptions:
        return cls(settings.model, settings.pretrained, device, precision, backend)

    @classmethod
    def from_args(cls, args: argparse.Namespace, settings: Settings) -> EncoderOptions:
        """``--device``, ``--precision``, ``--backend`` (clipdb.cli.add_encoder_arguments)."""
        return cls.of(settings, device=args.device, precision=args.precision, backend=args.backend)

    def load(self) -> Encoder:
        """The weights these options name (what ingest would encode with)."""
        from clipdb.encoders import load_encoder

        return load_encoder(**asdict(self))

    def load_for(self, model: Model) -> Encoder:
        """The encoder that made ``model``'s rows (a checkpoint file must be passed again)."""
        pretrained = self.pretrained if model.pretrained.startswith("file:") else model.pretrained
        if pretrained is None:
            raise ClipdbError(
                f"{model} was made from a checkpoint file; pass it with ", Option("pretrained")
            )
        encoder = replace(self, model=model.architecture, pretrained=pretrained).load()
        if (encoder.architecture, encoder.pretrained) != (model.architecture, model.pretrained):
            raise ClipdbError(
                Option("pretrained", str(self.pretrained)), f" is not the checkpoint of {model}"
            )
        return encoder


def settings_with_stored_default(settings: Settings) -> Settings:
    """The weights a command encodes new images with: with no model named, the database's
    default model (``clipdb models default``), so a plain ``clipdb ingest`` after a switch
    keeps the default covering every file."""
    if settings.model_explicit or settings.pretrained is not None:
        return settings
    from clipdb.db import open_database
    from clipdb.search import stored_default

    with open_database(settings).connect() as conn:
        stored = stored_default(conn)
    if stored is None:
        return settings
    if stored.pretrained.startswith("file:"):
        raise ClipdbError(
            f"the default model {stored} was made from a checkpoint; pass ",
            Option("model", stored.architecture),
            " and ",
            Option("pretrained", "FILE|DIR", placeholder=True),
        )
    return replace(settings, model=stored.architecture, pretrained=stored.pretrained)


class NotIndexed(ClipdbError, LookupError):
    """The indexed image a query names is not there (HTTP 404)."""


@dataclass(frozen=True)
class Query:
    """What to search for: an image (a file, or a picture already decoded), a text, an indexed
    image (``like``: a path or row id as text, or a row id as int), any mix of them, concepts
    to push away from (``minus``) and how much each part counts.

    ``match`` says how ``text`` is matched: ``clip`` (its CLIP vector only), ``text`` (the
    words of the images: OCR text, keywords, names; no model is loaded), ``hybrid`` (both
    lists fused), or None: hybrid when the rows have words stored, else clip."""

    image: str | os.PathLike[str] | None = None
    picture: Image.Image | None = None
    text: str | None = None
    like: str | int | None = None
    minus: tuple[str, ...] = ()
    weights: Weights = Weights()
    match: str | None = None

    @property
    def needs_encoder(self) -> bool:
        parts = (self.image, self.picture, self.text)
        return any(part is not None for part in parts) or bool(self.minus)

    def check(self) -> None:
        """Fail on an image file that is missing or broken before a model loads."""
        if self.image is not None:
            open_image(self.image)


class Searcher:
    """A query's model, encoder, vector and results: the one pipeline every surface calls.

    ``connect`` opens a connection (a pool's, on the server). The encoder is loaded once and
    kept; ``keep_model`` keeps the first model chosen for every later query (a server serves
    one model). An ``encoder`` passed in fixes which weights are meant. Safe to share between
    threads: forward passes run one at a time (on a few CPU cores they only slow each other).
    Building one does no I/O.
    """

    def __init__(
        self,
        settings: Settings,
        options: EncoderOptions,
        connect: Connect,
        *,
        encoder: Encoder | None = None,
        keep_model: bool = False,
    ) -> None:
        if encoder is not None:
            settings = replace(settings, model=encoder.architecture, pretrained=encoder.pretrained)
        self.settings = settings
        self.options = options
        self.encoder = encoder  # the last one loaded (or given)
        self._connect = connect
        self._keep_model = keep_model
        self._model: Model | None = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._warned: set[str] = set()  # architectures already warned about a query's script

    @property
    def chosen_model(self) -> Model | None:
        """The kept model (``keep_model``), None until one was chosen."""
        return self._model

    def model(self, like: str | int | None = None) -> Model:
        """Which model's rows a query means (:func:`clipdb.search.choose_model`)."""
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is not None:
                return self._model
            with self._connect() as conn:
                model = choose_model(
                    conn, self.settings, like=like if isinstance(like, str) else None
                )
            if self._keep_model:
                self._model = model
        return model

    def encoder_for(self, model: Model | None = None) -> Encoder:
        """The encoder that made ``model``'s rows; without a model, the settings' weights."""
        encoder = self.encoder
        if encoder is not None and _fits(encoder, model):
            return encoder
        with self._encode_lock:
            encoder = self.encoder
            if encoder is None or not _fits(encoder, model):
                encoder = self.options.load() if model is None else self.options.load_for(model)
                self.encoder = encoder
            return encoder

    def vector(self, query: Query, model: Model | None = None) -> np.ndarray:
        """The unit query vector; ``model`` None: no rows are involved (the settings' weights,
        and no ``like``)."""
        indexed = None
        if query.like is not None:
            if model is None:
                raise UsageError("an indexed image is a query only with a model's rows")
            indexed = self._indexed(model, query.like)
        if not query.needs_encoder:
            return combine_query(indexed, weights=query.weights)
        encoder = self.encoder_for(model)
        if query.text is not None:
            self._warn_unread_script(encoder.architecture, query.text)
        picture = query.picture
        if query.image is not None:
            picture = open_image(query.image, encoder)  # at ingest's decoding scale
        with self._encode_lock:
            image = encoder.encode_pil([picture])[0] if picture is not None else indexed
            text = encoder.encode_texts([query.text])[0] if query.text is not None else None
            minus = list(encoder.encode_texts(list(query.minus))) if query.minus else []
        return combine_query(image, text, minus, query.weights)

    def _warn_unread_script(self, architecture: str, text: str) -> None:
        """One line, once per model, when a text is in a script the model cannot read."""
        from clipdb.presets import language_warning

        message = language_warning(architecture, text)
        if message is not None and architecture not in self._warned:
            self._warned.add(architecture)
            print(f"warning: {message}", file=sys.stderr)

    def _indexed(self, model: Model, like: str | int) -> np.ndarray:
        with self._connect() as conn:
            if isinstance(like, str):
                return queries.indexed_embedding(conn, model, like)
            found = queries.embedding_by_id(conn, model, like)
        if found is None:
            raise NotIndexed(f"no image with id {like} is indexed with model {model}")
        return found

    def top_k(self, vector: np.ndarray, options: SearchOptions, model: Model) -> list[Hit]:
        """The search itself, for a vector made already (:meth:`vector`)."""
        with self._connect() as conn:
            return search(conn, model, vector, options)

    def batch(
        self,
        paths: Sequence[Path],
        options: SearchOptions,
        model: Model | None = None,
        **outputs: Any,
    ) -> dict[str, list[dict[str, Any]]]:
        """Every image of ``paths`` a query (:func:`clipdb.search.run_batch`; ``outputs``:
        its ``out``, ``on_skip``, ``on_done``)."""
        model = model or self.model()
        encoder = self.encoder_for(model)
        with self._connect() as conn:
            return run_batch(conn, model, encoder, paths, options, **outputs)

    def search(self, query: Query, options: SearchOptions, model: Model | None = None) -> list[Hit]:
        """Top-k hits for ``query``, best first (``model``: as :meth:`model` chooses)."""
        query.check()
        model = model or self.model(query.like)
        match = self.match_for(query, model, options)
        if match == "clip":
            return self.top_k(self.vector(query, model), options, model)
        return self.text_top_k(query, match, options, model)

    def match_for(self, query: Query, model: Model, options: SearchOptions | None = None) -> str:
        """How ``query`` is matched: its own ``match``; else hybrid for a text query when
        ``model``'s rows have words stored, else clip. Options only a CLIP ranking has
        (hiding duplicates, a similarity threshold) keep a defaulted match at clip, so they
        work as before words were stored."""
        if query.match is not None:
            check_text_query(query.text, query.match)
            return query.match
        clip_only = options is not None and (
            options.hide_duplicates or options.threshold is not None
        )
        if query.text is None or clip_only:
            return "clip"
        with self._connect() as conn:
            return "hybrid" if has_text(conn, model) else "clip"

    def text_top_k(
        self, query: Query, match: str, options: SearchOptions, model: Model
    ) -> list[Hit]:
        """A text or hybrid search: the words side needs no model; hybrid's CLIP vector is
        :meth:`vector`'s (text, image, like, minus, all as in a CLIP search)."""
        if options.hide_duplicates or options.threshold is not None:
            raise UsageError("--hide-duplicates and --threshold go with --match clip")
        vector = None
        if match == "hybrid":
            vector = self.vector(query, model)
        elif query.image is not None or query.picture is not None or query.like is not None:
            raise UsageError("--match text searches by --text alone")
        with self._connect() as conn:
            return search_text(
                conn,
                model,
                query.text,
                options.k,
                vector=vector,
                match=match,
                ef_search=min(options.ef_search, queries.EF_SEARCH_MAX),
                under=options.under,
                filters=options.filters,
            )


def _fits(encoder: Encoder, model: Model | None) -> bool:
    """Whether ``encoder`` made ``model``'s rows (any encoder does when no model is meant)."""
    return model is None or (encoder.architecture, encoder.pretrained) == (
        model.architecture,
        model.pretrained,
    )
