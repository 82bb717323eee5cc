"""What an error becomes over HTTP: a status and one line of JSON, never a traceback."""

from __future__ import annotations

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from clipdb.errors import ClipdbError, first_line
from clipdb.serve.limits import Busy
from clipdb.serve.pool import DatabaseDown, QueryTimeout

RETRY_AFTER_S = 2


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClipdbError)
    def clipdb_error(request: Request, err: ClipdbError) -> JSONResponse:
        if isinstance(err, QueryTimeout):
            # The same request would run as long again: no Retry-After.
            return JSONResponse({"detail": str(err)}, status_code=504)
        # Busy, database down, nothing indexed for this model yet, weights missing: the
        # server's state, not the client's fault. The first two pass: say when to retry.
        passing = isinstance(err, (DatabaseDown, Busy))
        retry = {"Retry-After": str(RETRY_AFTER_S)} if passing else None
        return JSONResponse({"detail": str(err)}, status_code=503, headers=retry)

    @app.exception_handler(psycopg.OperationalError)
    def database_error(request: Request, err: psycopg.OperationalError) -> JSONResponse:
        # The pool turns a lost connection into DatabaseDown and a statement timeout into
        # QueryTimeout; anything else (a cancelled query) is still the database's trouble,
        # not the client's: one line, no traceback.
        return JSONResponse({"detail": f"database: {first_line(err)}"}, status_code=503)

    @app.exception_handler(psycopg.DataError)
    def bad_value(request: Request, err: psycopg.DataError) -> JSONResponse:
        # A value PostgreSQL cannot hold (a NUL byte in `under`): the client's input, not a 500.
        return JSONResponse({"detail": f"invalid input: {first_line(err)}"}, status_code=400)
