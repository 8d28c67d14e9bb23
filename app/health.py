"""Readiness: can this process reach what it needs to serve requests?"""

from __future__ import annotations

from collections.abc import Callable

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import Settings

__all__ = ["check_readiness"]


def check_readiness(session_factory: Callable[[], Session], settings: Settings) -> dict[str, str]:
    """``{"database": "ok" | "error: ...", "redis": ...}``; never raises."""
    checks: dict[str, str] = {}
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
        with client:
            client.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    return checks
