"""Search routes: by an upload and/or a text, by text alone, by an indexed image ("more like
this", no model needed), and the query embedding itself. Search answers carry a
``Server-Timing`` header with the seconds of each phase."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.responses import JSONResponse

from clipdb.config import DEFAULT_EF_SEARCH, DEFAULT_TOP_K
from clipdb.db.registry import Model
from clipdb.errors import UsageError
from clipdb.filters import NO_FILTERS, Filters
from clipdb.models_cli import model_name
from clipdb.query import Query as ServiceQuery
from clipdb.search import SearchOptions
from clipdb.serve.limits import MAX_TOP_K, BadUpload, too_large_message
from clipdb.serve.params import form_filters, query_filters
from clipdb.serve.picker import UnknownModel
from clipdb.serve.service import SearchService

MatchKind = Literal["clip", "text", "hybrid"]
MATCH_HELP = (
    "clip, text (the words in the images, their keywords and file names) or hybrid (both); "
    "default hybrid when the images' words are indexed, else clip"
)
MODEL_HELP = (
    "an indexed model (architecture/pretrained, as GET /api/models names it); "
    "default: the one this server serves"
)
# Which model's rows answered a search, as GET /api/models names it.
MODEL_HEADER = "X-Clipdb-Model"


def search_router(service: SearchService, max_upload_bytes: int) -> APIRouter:
    """``/api/search`` (POST: an upload and/or a text; GET: a text) and ``/api/embed``.
    Uploads over ``max_upload_bytes`` are refused (413)."""
    router = APIRouter()
    _add_upload_routes(router, service, max_upload_bytes)
    _add_text_route(router, service)
    return router


def similar_router(service: SearchService) -> APIRouter:
    """``/api/similar/{image_id}``: the query is an indexed image's stored vector."""
    router = APIRouter()

    @router.get("/api/similar/{image_id}", summary="More like an indexed image (no model needed)")
    def similar(
        image_id: int,
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        threshold: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
        under: Annotated[str | None, Query()] = None,
        filters: Annotated[Filters, Depends(query_filters)] = NO_FILTERS,
        model: Annotated[str | None, Query(description=MODEL_HELP, max_length=500)] = None,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``."""
        started = time.perf_counter()
        picked = _picked(service, model)
        try:
            vector = service.vector(ServiceQuery(like=image_id), picked)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        phases = {"lookup": time.perf_counter() - started}
        return _search(service, vector, phases, k, threshold, under, filters, False, picked)

    return router


def _picked(service: SearchService, name: str | None) -> Model:
    """The model a request names (None: the served one); an unknown name is the client's."""
    try:
        return service.picked(name or None)
    except UnknownModel as err:
        raise HTTPException(422, str(err)) from None


def _encode(
    service: SearchService,
    max_upload_bytes: int,
    image: UploadFile | None,
    text: str | None,
    model: Model,
) -> tuple[np.ndarray, dict[str, float]] | None:
    """The query vector of an upload and/or a text (None without either), and the seconds
    spent decoding (waiting for a decode slot included) and encoding."""
    if image is None or not (image.filename or image.size):
        return _encode_text(service, text, model)
    started = time.perf_counter()

    def read() -> bytes:
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large_message(max_upload_bytes))
        return data

    try:
        vector, decode_s = service.encode_upload(read, text, model)
    except BadUpload as err:
        raise HTTPException(400, str(err)) from None
    return vector, {"decode": decode_s, "encode": time.perf_counter() - started - decode_s}


def _encode_text(
    service: SearchService, text: str | None, model: Model
) -> tuple[np.ndarray, dict[str, float]] | None:
    """The query vector of a text (None without one) and the seconds spent encoding it."""
    if text is None:
        return None
    started = time.perf_counter()
    vector = service.vector(ServiceQuery(text=text), model)
    return vector, {"decode": 0.0, "encode": time.perf_counter() - started}


def _search(
    service: SearchService,
    vector: np.ndarray,
    phases: dict[str, float],
    k: int,
    threshold: float | None,
    under: str | None,
    filters: Filters,
    hide_duplicates: bool,
    model: Model,
) -> Response:
    started = time.perf_counter()
    options = SearchOptions(
        k, DEFAULT_EF_SEARCH, under or None, threshold, filters, hide_duplicates
    )
    hits = service.search(vector, options, model)
    phases["db"] = time.perf_counter() - started
    return _answer(hits, model, phases)


def _answer(hits: list[Any], model: Model, phases: dict[str, float]) -> Response:
    """The hits, with the phases' seconds and the model that answered in headers."""
    headers = {**_server_timing(**phases), MODEL_HEADER: model_name(model)}
    return JSONResponse([hit.to_dict() for hit in hits], headers=headers)


def _text_match(
    service: SearchService, text: str, match: str | None, clip_only: bool, model: Model
) -> str:
    """How a text is matched: as asked; by default clip where only CLIP can do what was
    asked (hide duplicates, a similarity floor), else as the service decides."""
    if not text:
        return "clip"
    if match is None and clip_only:
        return "clip"
    return service.match_for(text, match, model)


def _search_words(
    service: SearchService, text: str, match: str, options: SearchOptions, model: Model
) -> Response:
    """A text or hybrid search: encoding (hybrid's text vector) and the query in one phase."""
    started = time.perf_counter()
    try:
        hits = service.search_text(text, match, options, model)
    except UsageError as err:  # an option a text match cannot honour: the client's request
        raise HTTPException(400, str(err)) from None
    return _answer(hits, model, {"search": time.perf_counter() - started})


def _server_timing(**phases: float) -> dict[str, str]:
    return {"Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in phases.items())}


def _add_upload_routes(router: APIRouter, service: SearchService, max_upload_bytes: int) -> None:
    """The POST routes, whose query is a form: an uploaded image and/or a text."""

    @router.post("/api/search", summary="Search by an uploaded image and/or a text")
    def search_upload(
        image: Annotated[UploadFile | None, File(description="query image")] = None,
        text: Annotated[str | None, Form(description="query text")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_TOP_K, description="number of results")] = (
            DEFAULT_TOP_K
        ),
        threshold: Annotated[
            float | None, Form(ge=-1.0, le=1.0, description="minimum cosine similarity")
        ] = None,
        under: Annotated[str | None, Form(description="only images under this directory")] = None,
        hide_duplicates: Annotated[
            bool, Form(description="collapse exact/near duplicates to their kept image")
        ] = False,
        filters: Annotated[Filters, Depends(form_filters)] = NO_FILTERS,
        match: Annotated[MatchKind | None, Form(description=MATCH_HELP)] = None,
        model: Annotated[str | None, Form(description=MODEL_HELP, max_length=500)] = None,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``.

        With both an image and a text, the query is the normalised mean of their embeddings.
        A text alone is also matched by the images' words (``match``, as in the GET search).
        """
        words = (text or "").strip()
        picked = _picked(service, model)
        clip_only = hide_duplicates or threshold is not None
        resolved = _text_match(service, words, match, clip_only, picked)
        if image is None and resolved != "clip":
            options = SearchOptions(
                k, DEFAULT_EF_SEARCH, under or None, threshold, filters, hide_duplicates
            )
            return _search_words(service, words, resolved, options, picked)
        encoded = _encode(service, max_upload_bytes, image, words or None, picked)
        if encoded is None:
            raise HTTPException(400, "give a query: an image, a text, or both")
        vector, phases = encoded
        return _search(
            service, vector, phases, k, threshold, under, filters, hide_duplicates, picked
        )

    @router.post("/api/embed", summary="The query embedding of an image and/or a text")
    def embed(
        image: Annotated[UploadFile | None, File(description="image")] = None,
        text: Annotated[str | None, Form(description="text")] = None,
        model: Annotated[str | None, Form(description=MODEL_HELP, max_length=500)] = None,
    ) -> JSONResponse:
        """``{"architecture", "pretrained", "dim", "vector"}``: the L2-normalised vector a
        search with the same inputs would use (image + text: their normalised mean), for
        ``clipdb.search(vector, ...)`` in SQL or another app. The model is the served one
        unless ``model`` names another indexed one."""
        picked = _picked(service, model)
        encoded = _encode(service, max_upload_bytes, image, (text or "").strip() or None, picked)
        if encoded is None:
            raise HTTPException(422, "give an image, a non-empty text, or both")
        vector = encoded[0]
        return JSONResponse(
            {
                "architecture": picked.architecture,
                "pretrained": picked.pretrained,
                "dim": int(vector.shape[0]),
                "vector": [float(v) for v in vector],
            }
        )


def _add_text_route(router: APIRouter, service: SearchService) -> None:
    """The GET search, whose query is a text in the URL."""

    @router.get("/api/search", summary="Search by text")
    def search_text(
        text: Annotated[str, Query(min_length=1, description="query text")],
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        threshold: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
        under: Annotated[str | None, Query()] = None,
        hide_duplicates: bool = False,
        filters: Annotated[Filters, Depends(query_filters)] = NO_FILTERS,
        match: Annotated[
            Literal["clip", "text", "hybrid"] | None,
            Query(
                description="clip, text (words in the images and names) or hybrid; "
                "default hybrid when the images' words are indexed, else clip"
            ),
        ] = None,
        model: Annotated[str | None, Query(description=MODEL_HELP, max_length=500)] = None,
    ) -> Response:
        """Results as a list of ``{rank, image_path, similarity, filename, image_id}``, plus
        ``match`` (clip, text or both) and ``matched_text`` for a text or hybrid match. The
        ``X-Clipdb-Model`` header names the model that answered."""
        picked = _picked(service, model)
        clip_only = hide_duplicates or threshold is not None
        resolved = _text_match(service, text.strip(), match, clip_only, picked)
        if resolved != "clip":
            options = SearchOptions(
                k, DEFAULT_EF_SEARCH, under or None, threshold, filters, hide_duplicates
            )
            return _search_words(service, text, resolved, options, picked)
        encoded = _encode_text(service, text.strip() or None, picked)
        if encoded is None:
            raise HTTPException(400, "give a query: an image, a text, or both")
        vector, phases = encoded
        return _search(
            service, vector, phases, k, threshold, under, filters, hide_duplicates, picked
        )
