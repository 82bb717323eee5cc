"""What ``clipdb dupes`` finds: groups of members, and what could not be judged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Member:
    """One image of a group; ``distance`` (exact/near: pHash bits from the kept image) or
    ``similarity`` (similar: cosine to the kept image)."""

    image_id: int
    image_path: str
    width: int
    height: int
    size: int
    keep: bool
    distance: int | None = None
    similarity: float | None = None
    mtime_ns: int = 0
    metadata: tuple[str, ...] = ()  # capture metadata the file has (clipdb.db.dupes)
    reason: str | None = None  # the kept one: why (clipdb.dupes.keep)
    extra_metadata: tuple[str, ...] = ()  # a dupe's metadata the kept file lacks
    identical: bool = False  # the same bytes (sha256) as the kept file
    outside: bool = False  # not under the paths asked about
    aliases: tuple[str, ...] = ()  # other indexed names of this same file (links)
    link: bool = False  # the name is a symbolic link or goes through one

    def to_dict(self) -> dict[str, Any]:
        from clipdb.files import display

        data: dict[str, Any] = {
            "image_path": display(self.image_path),
            "image_id": self.image_id,
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "keep": self.keep,
        }
        if self.distance is not None:
            data["distance"] = self.distance
        if self.similarity is not None:
            data["similarity"] = round(self.similarity, 6)
        data["metadata"] = list(self.metadata)
        if self.keep:
            data["reason"] = self.reason
        else:
            data["extra_metadata"] = list(self.extra_metadata)
        data["outside"] = self.outside
        if self.aliases:
            data["aliases"] = [display(a) for a in self.aliases]
        if self.link:
            data["link"] = True
        return data


@dataclass(frozen=True)
class Group:
    tier: str
    images: tuple[Member, ...]

    @property
    def kept(self) -> Member:
        return next(m for m in self.images if m.keep)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "images": [m.to_dict() for m in self.images]}


@dataclass
class DupesResult:
    """Groups, and what could not be judged."""

    groups: list[Group] = field(default_factory=list)
    images: int = 0  # rows looked at (under the paths)
    stale: list[str] = field(default_factory=list)  # changed or gone since indexing
    unhashed: int = 0  # rows without a pHash yet (near tier blind to them)
