"""``clipdb models`` (``python -m clipdb.models_cli``): indexed models, presets, the default."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipdb.cli import command_parser, run_command
from clipdb.config import Settings, add_common_arguments
from clipdb.errors import UsageError

if TYPE_CHECKING:
    import psycopg

EXAMPLES = """\
examples:
  clipdb models                          # models with rows: coverage, index size, default
  clipdb models presets                  # the supported models: quality, size, licence
  clipdb models default ViT-B-32-SigLIP2-256/webli
  clipdb models drop ViT-B-32/openai --yes
"""

ACTIONS = {
    "list": "models with rows: images, coverage, index size, default, last ingest",
    "presets": "the models clipdb supports: purpose, size, published quality, licence, cached",
    "default": "set the model every client uses when none is named",
    "drop": "delete a model's rows and index",
}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("models", "The models in the database, and those to pick.", EXAMPLES)
    add_common_arguments(parser, with_model=False)
    parser.add_argument("--json", action="store_true", default=False, help="print JSON")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions")
    for name, what in ACTIONS.items():
        sub = actions.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        sub.set_defaults(command_prog=sub.prog)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON")
        add_common_arguments(sub, with_model=False)
        if name in ("default", "drop"):
            sub.add_argument("name", metavar="NAME", help="architecture/pretrained, as listed")
        if name == "default":
            sub.add_argument(
                "--force",
                action="store_true",
                help="set it even below 100%% coverage (says what searches would miss)",
            )
        if name == "drop":
            sub.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        action = args.action or "list"
        if action == "presets":
            from clipdb.presets import format_presets, preset_rows

            presets = preset_rows()
            print(json.dumps(presets, indent=2) if args.json else format_presets(presets))
            return 0
        from clipdb.db import open_database
        from clipdb.db.model_admin import model_rows
        from clipdb.models_cli import format_rows, row_json

        database = open_database(Settings.from_args(args))
        with database.connect(autocommit=True) as conn:
            if action == "list":
                rows = model_rows(conn)
                out = json.dumps([row_json(r) for r in rows], indent=2)
                print(out if args.json else format_rows(rows))
                return 0
            if action == "default":
                return set_default(conn, args)
            return drop(conn, args)

    return run_command(build_parser(), argv, body)


def set_default(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    from clipdb.db.model_admin import set_default_model
    from clipdb.models_cli import check_switch, find_model, model_name

    model = find_model(conn, args.name)
    for line in check_switch(conn, model, force=args.force):
        print(f"warning: {line}" if not line.startswith(" ") else line, file=sys.stderr)
    set_default_model(conn, model)
    print(f"default model: {model_name(model)} (every client, when no model is named)")
    return 0


def drop(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    from clipdb.db.model_admin import drop_model
    from clipdb.models_cli import find_model, model_name

    model = find_model(conn, args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"dropping {model_name(model)} deletes its rows; pass --yes")
        answer = input(f"delete every row and the index of {model_name(model)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept")
            return 1
    count = drop_model(conn, model)
    print(f"dropped {model_name(model)}: {count} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
