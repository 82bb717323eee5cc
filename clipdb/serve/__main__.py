"""``clipdb serve`` (``python -m clipdb.serve``): parse, start the server, exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clipdb.cli import (
    add_encoder_arguments,
    command_parser,
    non_negative_float,
    positive_float,
    run_command,
)
from clipdb.config import (
    DEFAULT_STATEMENT_TIMEOUT_S,
    STATEMENT_TIMEOUT_ENV,
    Settings,
    add_common_arguments,
    add_read_url_argument,
    allowed_hosts_env,
    statement_timeout_s,
)
from clipdb.errors import ClipdbError
from clipdb.serve import DEFAULT_HOST, DEFAULT_PORT
from clipdb.serve.limits import DEFAULT_MAX_UPLOAD_MB

EXAMPLES = """\
examples:
  clipdb serve                              # http://127.0.0.1:8000, API docs at /docs
  clipdb serve --host 0.0.0.0 --port 8080 --allow-host myhost.lan   # reachable from others:
      # the API has no authentication and returns absolute paths; expose it only on a
      # network you trust, or put an authenticating proxy in front
  curl 'http://127.0.0.1:8000/api/search?text=a+red+car&k=10'
  curl -F image=@query.jpg -F k=10 http://127.0.0.1:8000/api/search
  curl http://127.0.0.1:8000/api/similar/42
"""


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "serve", "Serve a search page and a JSON API over the index, with the model warm.", EXAMPLES
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests whose Host header is NAME (repeatable; also "
        "CLIPDB_ALLOWED_HOSTS, comma-separated); localhost names and --host always are",
    )
    add_common_arguments(parser)
    add_read_url_argument(parser)
    add_encoder_arguments(parser)
    parser.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest upload in MB; larger ones get HTTP 413 (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    parser.add_argument(
        "--statement-timeout",
        type=non_negative_float,
        metavar="SECONDS",
        help="cancel any database statement of a request after this long and answer HTTP 504, "
        f"so slow requests cannot hold every connection (env {STATEMENT_TIMEOUT_ENV}; "
        f"default {DEFAULT_STATEMENT_TIMEOUT_S:g}; 0: no limit)",
    )
    parser.add_argument(
        "--lazy", action="store_true", help="load the model on the first query, not at start"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        import uvicorn

        from clipdb.serve.app import create_app
        from clipdb.serve.server import listen, server_config

        settings = Settings.from_args(args)
        import logging

        # The pool logs each failed reconnection; the service logs one line per outage.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        from clipdb.encoders import resolve_model_spec

        resolve_model_spec(settings.model, settings.pretrained)  # a typo is a usage error
        statement_timeout = statement_timeout_s(args.statement_timeout)  # so is a bad env value
        # Bind before loading the model: a busy port fails at once, in one line, exit 1.
        sock = listen(args.host, args.port)
        app = create_app(
            settings,
            device=args.device,
            precision=args.precision,
            backend=args.backend,
            max_upload_bytes=int(args.max_upload_mb * 1_000_000),
            statement_timeout=statement_timeout,
            preload=False,
            allowed_hosts=allowed_hosts(args),
        )
        service = app.state.service
        if not args.lazy:
            try:
                service.model()
            except ClipdbError as err:  # nothing indexed yet: serve anyway, load on first query
                print(f"warning: {err}; the model loads on the first query", file=sys.stderr)
            else:
                service.encoder()
        port = sock.getsockname()[1]
        server = uvicorn.Server(server_config(app, args.host, port))
        # Listening already (connections queue in the backlog), so the banner is true now.
        print(f"serving on http://{args.host}:{port}/ (API docs at /docs)", file=sys.stderr)
        server.run(sockets=[sock])
        return 0

    return run_command(build_parser(), argv, body)


def allowed_hosts(args: argparse.Namespace) -> list[str]:
    """Host names to accept besides localhost: --host, --allow-host, CLIPDB_ALLOWED_HOSTS."""
    names = [args.host, *args.allow_host]
    names += allowed_hosts_env()
    # A wildcard bind address is no name a client would send.
    return [name.strip() for name in names if name.strip() not in ("", "0.0.0.0", "::")]


if __name__ == "__main__":
    sys.exit(main())
