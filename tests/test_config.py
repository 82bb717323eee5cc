from __future__ import annotations

from pathlib import Path

import pytest

from clipdb.config import Settings, canonical_model_name


def test_flags_beat_environment_beat_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPDB_DATABASE_URL", "postgresql://env/db")
    monkeypatch.setenv("CLIPDB_MODEL", "ViT-B/16")
    monkeypatch.delenv("CLIPDB_PRETRAINED", raising=False)
    settings = Settings.resolve(database_url="postgresql://flag/db")
    assert settings.database_url == "postgresql://flag/db"
    assert settings.model == "ViT-B-16"
    assert settings.pretrained is None
    monkeypatch.delenv("CLIPDB_DATABASE_URL")
    monkeypatch.delenv("CLIPDB_MODEL")
    monkeypatch.setenv("CLIPDB_HOME", "/tmp/somewhere")
    settings = Settings.resolve()
    assert settings.database_url is None and settings.model == "ViT-B-32"
    assert settings.home == Path("/tmp/somewhere")


def test_original_model_names_are_accepted() -> None:
    assert canonical_model_name("ViT-B/32") == "ViT-B-32"
    assert canonical_model_name("ViT-L/14") == "ViT-L-14"
    assert canonical_model_name("convnext_base_w") == "convnext_base_w"
