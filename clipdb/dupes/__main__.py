"""``clipdb dupes`` (``python -m clipdb.dupes``): parse, find groups, print, exit code."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence

from clipdb.cli import command_parser, run_command, similarity_value
from clipdb.config import Settings, add_common_arguments
from clipdb.db import open_database
from clipdb.dupes import (
    DEFAULT_NEAR_DISTANCE,
    DEFAULT_SIMILAR_THRESHOLD,
    TIERS,
    DupesResult,
    Group,
    dupes_for,
    parse_tiers,
)
from clipdb.errors import UsageError
from clipdb.files import display
from clipdb.terminal import printable

EXAMPLES = f"""\
tiers: exact = same bytes (sha256); near = perceptual hash within --near-distance bits
(re-encoded, resized, converted copies); similar = CLIP cosine >= --similar-threshold (the same
scene, another shot). Each image is in at most one group, in its strongest tier. Kept image:
most pixels, then most bytes, then most EXIF fields (date, camera, lens, place), then the
shortest path.

examples:
  clipdb dupes                               # every group of the model's images
  clipdb dupes ~/Pictures/2024 --tier exact,near
  clipdb dupes --json > groups.json
  clipdb dupes --script move.sh --move-to ~/dupes   # then: sh move.sh; clipdb ingest --prune
(defaults: --near-distance {DEFAULT_NEAR_DISTANCE}, --similar-threshold {DEFAULT_SIMILAR_THRESHOLD})
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("dupes", "Find duplicate images among the indexed ones.", EXAMPLES)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="only images under these")
    parser.add_argument(
        "--tier",
        metavar="TIERS",
        help=f"comma list of {', '.join(TIERS)} (default: all)",
    )
    parser.add_argument(
        "--near-distance",
        type=int,
        default=DEFAULT_NEAR_DISTANCE,
        metavar="BITS",
        help=f"near tier: pHash Hamming distance 0..8 (default {DEFAULT_NEAR_DISTANCE})",
    )
    parser.add_argument(
        "--similar-threshold",
        type=similarity_value,
        default=DEFAULT_SIMILAR_THRESHOLD,
        metavar="S",
        help=f"similar tier: cosine similarity (default {DEFAULT_SIMILAR_THRESHOLD})",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="groups as JSON")
    output.add_argument("--csv", action="store_true", help="one CSV row per image")
    parser.add_argument(
        "--script",
        metavar="FILE",
        help="write a sh script that moves every non-kept file into --move-to (exact and "
        "near groups, similar too when --tier names it); clipdb moves nothing itself",
    )
    parser.add_argument("--move-to", metavar="DIR", help="where the script moves duplicates")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --script FILE (a regular file; never a link) with a new one",
    )
    add_common_arguments(parser)
    return parser


def format_table(groups: Sequence[Group]) -> str:
    lines = []
    for number, group in enumerate(groups, 1):
        lines.append(f"group {number}: {group.tier}, {len(group.images)} images")
        for m in group.images:
            how = (
                f"{m.distance} bits"
                if m.distance is not None and not m.keep
                else f"{m.similarity:.4f}"
                if m.similarity is not None
                else ""
            )
            lines.append(
                f"  {'keep' if m.keep else 'dupe'}  {m.width}x{m.height}  {m.size:>10} B  "
                f"{how:>9}  {printable(display(m.image_path))}"
            )
    return "\n".join(lines)


def format_csv(groups: Sequence[Group]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ["image_path", "image_id", "width", "height", "size", "keep", "distance"]
    writer.writerow(["group", "tier", *columns, "similarity"])
    for number, group in enumerate(groups, 1):
        for m in group.images:
            data = m.to_dict()
            writer.writerow(
                [
                    number,
                    group.tier,
                    *(data.get(c, "") for c in columns),
                    data.get("similarity", ""),
                ]
            )
    return out.getvalue().rstrip("\n")


def report(result: DupesResult, paths: Sequence[str]) -> None:
    """What could not be judged, on stderr."""
    if result.images == 0:
        where = f" under {', '.join(printable(display(p)) for p in paths)}" if paths else ""
        print(f"no indexed images{where}: no duplicates", file=sys.stderr)
        return
    for path in result.stale:
        print(
            f"stale (changed or gone since indexing, not grouped): {printable(display(path))}",
            file=sys.stderr,
        )
    if result.unhashed:
        print(
            f"{result.unhashed} images have no perceptual hash yet (the near tier cannot see "
            "them); run clipdb ingest over them: it adds the hash without re-encoding",
            file=sys.stderr,
        )
    if not result.groups:
        print(f"no duplicates among {result.images} images", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        if (args.script is None) != (args.move_to is None):
            raise UsageError("--script and --move-to go together")
        if args.force and args.script is None:
            raise UsageError("--force goes with --script")
        if args.script is not None:
            from clipdb.dupes.script import check_script

            check_script(args.script, args.force)  # before any work: a refusal costs nothing
        tiers = parse_tiers(args.tier) if args.tier else TIERS
        settings = Settings.from_args(args)
        database = open_database(settings)
        result, trees = dupes_for(
            database,
            settings,
            args.paths or None,
            tiers=tiers,
            near_distance=args.near_distance,
            similar_threshold=args.similar_threshold,
            with_trees=args.script is not None,
        )
        if args.script is not None:
            from clipdb.dupes.script import check_move_to, common_root, write_script

            acting = [
                g for g in result.groups if g.tier != "similar" or "similar" in (args.tier or "")
            ]
            indexed = [*trees, *(args.paths or [])] + ([common_root(acting)] if acting else [])
            target = check_move_to(args.move_to, indexed)
            moves = write_script(args.script, acting, target, force=args.force)
            print(
                f"wrote {printable(display(args.script))}: {moves} moves into "
                f"{printable(display(target))}; read it, then run it with sh",
                file=sys.stderr,
            )
        if args.json:
            print(json.dumps([g.to_dict() for g in result.groups], indent=2, ensure_ascii=False))
        elif args.csv:
            print(format_csv(result.groups))
        elif result.groups:
            print(format_table(result.groups))
        report(result, args.paths)
        return 0

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
