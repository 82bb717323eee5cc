"""clipdb: find similar images with CLIP embeddings stored in PostgreSQL + pgvector."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ClipDB", "__version__"]

if TYPE_CHECKING:
    from clipdb.api import ClipDB


def __getattr__(name: str) -> Any:
    # Lazy: `import clipdb` must not import torch (the --like path never needs it).
    if name == "ClipDB":
        from clipdb.api import ClipDB

        return ClipDB
    raise AttributeError(name)
