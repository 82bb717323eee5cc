"""The metadata filters, --within, --sort and --offset as HTTP query parameters / form fields.

Same names and the same parser as the CLI (clipdb.filters); a refused value is a 422 with the
CLI's one-line message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, HTTPException, Query

from clipdb.errors import UsageError
from clipdb.filters import Filters, Near

AFTER = "taken at or after this ISO date/datetime"
BEFORE = "taken before this ISO date/datetime"
CAMERA = "camera make/model contains this text (any case)"
NEAR = "LAT,LON,KM: taken within KM km of that place"
WITHIN = "keep hits whose similarity is at least the best hit's minus this"
SORT = "relevance, date or -date (the top k by relevance, ordered by date, undated last)"
OFFSET = "skip the first N results of that ordering"


def make_filters(
    after: str | None,
    before: str | None,
    camera: str | None,
    near: str | None,
    within: float | None,
    sort: str | None,
    offset: int | None,
) -> Filters:
    try:
        return Filters(
            after=after or None,
            before=before or None,
            camera=camera,
            near=Near.parse(near) if near else None,
            within=within,
            sort=sort or "relevance",
            offset=offset or 0,
        )
    except UsageError as err:
        raise HTTPException(422, str(err)) from None


def query_filters(
    after: Annotated[str | None, Query(description=AFTER)] = None,
    before: Annotated[str | None, Query(description=BEFORE)] = None,
    camera: Annotated[str | None, Query(description=CAMERA, max_length=200)] = None,
    near: Annotated[str | None, Query(description=NEAR)] = None,
    within: Annotated[float | None, Query(description=WITHIN, ge=0, le=2)] = None,
    sort: Annotated[str | None, Query(description=SORT)] = None,
    offset: Annotated[int | None, Query(description=OFFSET, ge=0)] = None,
) -> Filters:
    """GET endpoints' filters (a FastAPI dependency)."""
    return make_filters(after, before, camera, near, within, sort, offset)


def form_filters(
    after: Annotated[str | None, Form(description=AFTER)] = None,
    before: Annotated[str | None, Form(description=BEFORE)] = None,
    camera: Annotated[str | None, Form(description=CAMERA, max_length=200)] = None,
    near: Annotated[str | None, Form(description=NEAR)] = None,
    within: Annotated[float | None, Form(description=WITHIN, ge=0, le=2)] = None,
    sort: Annotated[str | None, Form(description=SORT)] = None,
    offset: Annotated[int | None, Form(description=OFFSET, ge=0)] = None,
) -> Filters:
    """POST /api/search's filters, as form fields (a FastAPI dependency)."""
    return make_filters(after, before, camera, near, within, sort, offset)
