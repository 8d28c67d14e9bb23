"""Keyset pagination, newest first: ``?limit=&after=<cursor>`` answered with ``{data, next_cursor}``.

A cursor is an opaque token for the (created_at, id) of the last item of a page. Pages stay stable while
rows are added or deleted, and each page is one index range scan on ``(tenant_id, created_at DESC,
id DESC)``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from app.errors import ValidationFailed

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Page", "decode_cursor", "encode_cursor", "fetch_page"]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, object_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), object_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, param: str = "after") -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, object_id = json.loads(raw)
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None or not isinstance(object_id, str):
            raise ValueError
        return when, object_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValidationFailed(
            param, "invalid cursor: pass the next_cursor of the previous page unchanged"
        ) from None


def fetch_page(
    session: Session, statement: Select[Any], model: Any, *, limit: int, after: str | None
) -> Page[Any]:
    """The page of ``statement`` (already filtered by tenant) after the cursor ``after``, newest first."""
    if after is not None:
        created_at, object_id = decode_cursor(after)
        statement = statement.where(tuple_(model.created_at, model.id) < tuple_(created_at, object_id))
    statement = statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows: Sequence[Any] = session.scalars(statement).all()
    items = list(rows[:limit])
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)
