"""Finding image files: scan (stat), exclude patterns, hashing, and the skip reasons.

Bad files never raise: they come back as a reason string, which the caller prints as
``skipping <path>: <reason>``. Decoding is :mod:`clipdb.decode`.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Photos: Pillow's own formats, phone formats (HEIC/HEIF, AVIF) and camera RAW (the decoder
# for each is in clipdb.formats); videos are sampled into frames (clipdb.ingest.video).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
    | {".heic", ".heif", ".hif", ".avif"}
    | {".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"}
)
VIDEO_EXTENSIONS = frozenset({".mov", ".mp4", ".m4v", ".3gp", ".mkv", ".webm", ".avi"})
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
NO_EXTENSION = "(none)"  # the key of files without one in ScanResult.ignored
STILLS = (".heic", ".heif", ".jpg", ".jpeg")  # a Live Photo's still, beside its .mov

# Skip reasons: the keys of IngestSummary.skipped and the text after "skipping <path>: ".
BROKEN_SYMLINK = "broken symlink"
SYMLINK_LOOP = "symlink loop"
NOT_REGULAR = "not a regular file"
PERMISSION_DENIED = "permission denied"
UNREADABLE = "unreadable"
EMPTY = "empty file"
NOT_IMAGE = "not an image"
CORRUPT = "truncated or corrupt image"
TOO_LARGE = "too many pixels"
TOO_BIG = "file too large"
CHANGED = "changed since it was scanned"
CRASHED = "decoder crashed on it"
KILLED = "decode worker killed on it (out of memory?)"

# No image clipdb accepts is bigger than this; a sparse or endless "file" stops here.
MAX_FILE_BYTES = 512 * 1024 * 1024
# An image file is read whole into a decode worker's memory (several workers at once), so
# images have a lower cap; a sparse multi-GB ".png" is refused before a byte is read.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
# Videos are streamed (hashed in 1 MiB chunks, decoded frame by frame), never read whole.
MAX_VIDEO_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class FileStat:
    """An image file found on disk: absolute (not symlink-resolved) path, size and mtime.

    ``link``: the scanned path was a symlink, so reading it may follow one; for any other
    file a symlink found there later was swapped in after the scan and is refused.
    """

    path: str
    size: int
    mtime_ns: int
    link: bool = False

    def open_args(self) -> dict[str, Any]:
        """How to read this file as scanned: :func:`open_regular`'s keyword arguments."""
        return {"follow_links": self.link, "expected": (self.size, self.mtime_ns)}


@dataclass
class ScanResult:
    files: list[FileStat] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # Files that are not an image or video by their name: lowercase extension -> count, so
    # nothing under a root goes unaccounted for.
    ignored: dict[str, int] = field(default_factory=dict)
    # Live Photos: the .mov beside a photo of the same name is its motion, not an item.
    live_photos: int = 0


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def split_frame(path_or_id: str) -> tuple[str, float | None]:
    """``clip.mp4@83`` -> (``clip.mp4``, 83.0): a video's frame by its time in seconds (only
    after a video's name, so no photo's name is ever split); anything else -> (it, None)."""
    base, at, seconds = path_or_id.rpartition("@")
    if at and is_video_name(base):
        try:
            value = float(seconds)
        except ValueError:
            return path_or_id, None
        if value >= 0 and value == value and value != float("inf"):
            return base, value
    return path_or_id, None


def is_media_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS


def _excluded(path: str, root: str, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    relative = os.path.relpath(path, root) if path != root else os.path.basename(path)
    names = (os.path.basename(path), relative, path)
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in names)


def stat_reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return SYMLINK_LOOP
    if err.errno in (errno.EACCES, errno.EPERM):
        return PERMISSION_DENIED
    return UNREADABLE


def scan(roots: Iterable[str | os.PathLike[str]], exclude: Sequence[str] = ()) -> ScanResult:
    """Image and video files under ``roots`` (directories recursively, or files named directly).

    Symlinks are followed; each directory is visited once, so symlink loops cannot hang.
    Paths stay as found (``os.path.abspath``, links not resolved) and come back sorted.
    """
    scanner = _Scanner(exclude)
    for raw_root in roots:
        root = os.path.abspath(os.fspath(raw_root))
        if os.path.isdir(root):
            scanner.walk(root, root)
        else:
            scanner.add_file(root, explicit=True)
    scanner.result.files.sort(key=lambda f: f.path)
    return scanner.result


class _Scanner:
    """One scan: what it found and skipped, and what it has visited (directories by device
    and inode, so a link back up is not walked again)."""

    def __init__(self, exclude: Sequence[str]) -> None:
        self.exclude = exclude
        self.result = ScanResult()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.seen_files: set[str] = set()
        self.ignored_paths: set[str] = set()

    def add_file(self, path: str, explicit: bool) -> None:
        if path in self.seen_files:
            return
        ext = os.path.splitext(path)[1].lower() or NO_EXTENSION
        if not (explicit or is_media_name(path)):
            if path not in self.ignored_paths:
                self.ignored_paths.add(path)
                self.result.ignored[ext] = self.result.ignored.get(ext, 0) + 1
            return
        if path in self.ignored_paths:  # named as a root after a walk passed it by
            self.ignored_paths.discard(path)
            self.result.ignored[ext] -= 1
            if not self.result.ignored[ext]:
                del self.result.ignored[ext]
        self.seen_files.add(path)
        try:
            info = os.stat(path)
        except OSError as err:
            reason = stat_reason(err)
            if err.errno == errno.ENOENT and os.path.islink(path):
                reason = BROKEN_SYMLINK
            self.result.skipped.append((path, reason))
            return
        if not stat.S_ISREG(info.st_mode):
            self.result.skipped.append((path, NOT_REGULAR))
            return
        link = os.path.islink(path)
        self.result.files.append(FileStat(path, info.st_size, info.st_mtime_ns, link))

    def walk(self, directory: str, root: str) -> None:
        names = self._list(directory)
        if names is None:
            return
        stills = {os.path.splitext(n)[0].lower() for n in names if n.lower().endswith(STILLS)}
        for name in names:
            path = os.path.join(directory, name)
            if _excluded(path, root, self.exclude):
                continue
            try:
                is_dir = os.path.isdir(path)  # follows symlinks; False for broken/looping ones
            except OSError:
                is_dir = False
            stem, ext = os.path.splitext(name)
            if is_dir:
                self.walk(path, root)
            elif ext.lower() == ".mov" and stem.lower() in stills:
                self.result.live_photos += 1  # a Live Photo's motion: the photo is the item
            else:
                self.add_file(path, explicit=False)

    def _list(self, directory: str) -> list[str] | None:
        """The sorted names in a directory not visited yet; None if visited or unreadable."""
        try:
            info = os.stat(directory)
        except OSError as err:
            self.result.skipped.append((directory, stat_reason(err)))
            return None
        key = (info.st_dev, info.st_ino)
        if key in self.seen_dirs:
            return None
        self.seen_dirs.add(key)
        try:
            with os.scandir(directory) as entries:
                return sorted(entry.name for entry in entries)
        except OSError as err:
            self.result.skipped.append((directory, stat_reason(err)))
            return None


def db_path(path: str) -> tuple[str, bytes | None]:
    """A path as Python sees it -> (text stored in ``path``, exact bytes for ``path_bytes``).

    A name that is not valid UTF-8 (Python holds its bad bytes as surrogate escapes, which
    PostgreSQL text rejects) is stored as a display form, bad bytes written ``\\xe9`` and,
    so that form stays unambiguous, literal backslashes doubled; its bytes go alongside.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace"), raw
    return path, None


def display(path: str) -> str:
    """How a path is printed and stored: undecodable bytes escaped (see :func:`db_path`)."""
    return db_path(path)[0]


def fs_path(stored_path: str, path_bytes: bytes | memoryview | None) -> str:
    """A stored row's path as the file system knows it: what to open, stat or compare."""
    if path_bytes is None:
        return stored_path
    return os.fsdecode(bytes(path_bytes))


def is_gone(path: str) -> bool:
    """True only when ``path`` certainly no longer exists: stat says ENOENT and its nearest
    existing ancestor is a directory this process can read and search. Anything that could
    not be checked (permission denied, I/O error, a parent we cannot enter) is not gone, so
    --prune never deletes the row of a file that is merely out of reach."""
    try:
        os.stat(path)
        return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    parent = os.path.dirname(path)
    while True:
        try:
            info = os.stat(parent)
        except FileNotFoundError:
            if parent == os.path.dirname(parent):
                return False
            parent = os.path.dirname(parent)
            continue
        except OSError:
            return False
        return stat.S_ISDIR(info.st_mode) and os.access(parent, os.R_OK | os.X_OK)


class FileRejected(Exception):
    """A file that is not (or no longer) a readable regular file; ``str(err)`` is the reason."""


def open_regular(
    path: str,
    *,
    follow_links: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
    expected: tuple[int, int] | None = None,
) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without ever blocking, and check what was opened.

    O_NONBLOCK: a FIFO or device swapped in after the scan cannot hang the open;
    O_NOFOLLOW (``follow_links=False``): a symlink swapped in is refused. After opening, fstat
    must show a regular file of at most ``max_bytes``, and, with ``expected`` (size,
    mtime_ns), exactly that identity. Returns the descriptor (the caller closes it) and its
    stat; raises :class:`FileRejected` with the skip reason.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow_links:
            raise FileRejected(CHANGED) from None
        raise FileRejected(stat_reason(err)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRejected(NOT_REGULAR)
        if info.st_size > max_bytes:
            raise FileRejected(TOO_BIG)
        if expected is not None and (info.st_size, info.st_mtime_ns) != expected:
            raise FileRejected(CHANGED)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_regular(
    path: str,
    *,
    follow_links: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
    expected: tuple[int, int] | None = None,
) -> bytes:
    """The whole content of a regular file, opened as :func:`open_regular` opens it and read
    up to its checked size (a file that grows meanwhile is cut there, never read unbounded)."""
    fd, info = open_regular(path, follow_links=follow_links, max_bytes=max_bytes, expected=expected)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(info.st_size + 1)
    except OSError as err:
        raise FileRejected(stat_reason(err)) from None
    finally:
        os.close(fd)
    if len(data) > info.st_size:
        raise FileRejected(CHANGED)
    return data


def sha256_file(
    path: str,
    *,
    follow_links: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
    expected: tuple[int, int] | None = None,
) -> bytes:
    """sha256 of a regular file, streamed in 1 MiB chunks (bounded memory)."""
    fd, info = open_regular(path, follow_links=follow_links, max_bytes=max_bytes, expected=expected)
    digest = hashlib.sha256()
    remaining = info.st_size
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            while remaining > 0:
                chunk = handle.read(min(1 << 20, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
    except OSError as err:
        raise FileRejected(stat_reason(err)) from None
    finally:
        os.close(fd)
    return digest.digest()


def hash_task(found: FileStat) -> tuple[str, bytes | None, str | None]:
    """(path, sha256, None) or (path, None, reason): for the move-detection pass. The file
    must still be what the scan saw (a FIFO, device or link swapped in is refused)."""
    limit = MAX_VIDEO_BYTES if is_video_name(found.path) else MAX_FILE_BYTES
    try:
        return found.path, sha256_file(found.path, max_bytes=limit, **found.open_args()), None
    except FileRejected as err:
        return found.path, None, str(err)
