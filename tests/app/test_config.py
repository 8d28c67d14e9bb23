"""Settings: read from the environment, cached, and refusing unsafe values in production."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from app.config import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: what the machine exports must not change what these tests see."""
    for name in list(os.environ):
        if name.startswith("BERTPT_") or name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTPT_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("BERTPT_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings()
    assert settings.max_upload_bytes == 1234
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.hf_hub_offline is True
    assert settings.training_queue == "training"


def test_get_settings_is_cached() -> None:
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


def test_production_refuses_unsafe_defaults() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(env="prod")
    assert "SQLite" in str(info.value) and "CORS" in str(info.value)
    Settings(env="prod", database_url="postgresql+psycopg://db/bertpt", cors_origins=["https://ui.example"])
    with pytest.raises(ValidationError, match="file:// or s3://"):
        Settings(storage_url="http://bucket")
    assert Settings(storage_url="s3://bucket/some/prefix").storage_url == "s3://bucket/some/prefix"


def test_uploads_leave_threads_to_other_requests() -> None:
    assert Settings(api_threads=8).concurrent_uploads() == 4
    assert Settings(api_threads=1).concurrent_uploads() == 1
    assert Settings(api_threads=8, max_concurrent_uploads=7).concurrent_uploads() == 7
    with pytest.raises(ValidationError, match="MAX_CONCURRENT_UPLOADS"):
        Settings(api_threads=8, max_concurrent_uploads=8)
