"""``clipdb COMMAND ...`` (the console script, also ``python -m clipdb``).

Each subcommand is the ``main`` of ``clipdb.COMMAND.__main__``, so ``clipdb ingest ...`` and
``python -m clipdb.ingest ...`` are the same program. Only the chosen command is imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from clipdb import __version__

COMMANDS = {
    "ingest": "index image files and folders (incremental, online)",
    "search": "find similar images by image, text or an indexed image",
    "embed": "print the query embedding of an image or text (for SQL)",
    "serve": "web page and JSON API on 127.0.0.1",
    "db": "the database: url, status, stop, upgrade, replicate, promote",
    "dupes": "duplicate groups (exact, near, similar) and a script to move them",
    "models": "indexed models, presets, the default model; drop a model",
}

# Commands whose package is not named as the command (clipdb.models is the model registry).
MODULES = {"models": "models_cli"}

USAGE = "usage: clipdb [--version] [--help] COMMAND [ARGS...]"


def help_text() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        USAGE,
        "",
        "Find similar images with CLIP embeddings stored in PostgreSQL + pgvector.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()),
        "",
        "Run 'clipdb COMMAND --help' for a command's options. Every command also runs as",
        "'python -m clipdb.COMMAND'.",
        "",
        "examples:",
        "  clipdb ingest ~/Pictures",
        '  clipdb search --text "a red car" -k 10',
        "  clipdb serve",
        "  clipdb db status",
        "",
        "exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted (Ctrl-C),",
        "141 the reader closed the output pipe (| head): output stops quietly.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(help_text(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"clipdb {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(USAGE, file=sys.stderr)
        print(
            f"clipdb: error: unknown command {command!r} (choose from {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    from clipdb import cli

    cli.invoked_as = "clipdb "
    module = importlib.import_module(f"clipdb.{MODULES.get(command, command)}.__main__")
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
