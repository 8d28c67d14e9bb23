"""Keyset pagination, newest first: ``?limit=&after=<cursor>`` answered with ``{data, next_cursor}``.

A cursor stands for the (created_at, id) of the last item of a page: ``<created_at in microseconds since
1970>.<id>``, opaque to clients (pass ``next_cursor`` back unchanged). Pages stay stable while rows are
added or deleted, and each page is one index range scan on ``(tenant_id, created_at DESC, id DESC)``.

The OpenAPI schema declares each cursor's pattern (:mod:`app.api.schemas`), and every string that matches
it is a cursor, so that what the schema allows the server accepts; an empty cursor, like none, asks for
the first page. A run's events, oldest first, take the id of the last event seen (``ID_CURSOR_PATTERN``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from app.errors import ValidationFailed

__all__ = [
    "CURSOR_PATTERN",
    "DEFAULT_LIMIT",
    "ID_CURSOR_PATTERN",
    "MAX_LIMIT",
    "Page",
    "decode_cursor",
    "decode_id_cursor",
    "encode_cursor",
    "fetch_page",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Up to 16 digits of microseconds reach the year 2286; ids are <prefix>_<url-safe characters> (app.ids).
CURSOR_PATTERN = r"^([0-9]{1,16}\.[A-Za-z0-9_-]{1,40})?$"
# 18 digits stay within a bigint.
ID_CURSOR_PATTERN = r"^[0-9]{0,18}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_ID_CURSOR = re.compile(ID_CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INVALID = "invalid cursor: pass the next_cursor of the previous page unchanged"


T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, object_id: str) -> str:
    return f"{(created_at - _EPOCH) // _MICROSECOND}.{object_id}"


def decode_cursor(cursor: str, *, param: str = "after") -> tuple[datetime, str] | None:
    """The (created_at, id) a cursor stands for, None for an empty one (the first page); ValidationFailed
    (naming ``param``) when it does not match :data:`CURSOR_PATTERN`."""
    if not _CURSOR.match(cursor):
        raise ValidationFailed(param, _INVALID)
    cursor = cursor.strip()
    if not cursor:
        return None
    micros, _, object_id = cursor.partition(".")
    return _EPOCH + int(micros) * _MICROSECOND, object_id


def decode_id_cursor(cursor: str, *, param: str = "after") -> int | None:
    """The id a cursor of :data:`ID_CURSOR_PATTERN` names, None for an empty one (the first page)."""
    if not _ID_CURSOR.match(cursor):
        raise ValidationFailed(param, _INVALID)
    cursor = cursor.strip()
    return int(cursor) if cursor else None


def fetch_page(
    session: Session, statement: Select[Any], model: Any, *, limit: int, after: str | None
) -> Page[Any]:
    """The page of ``statement`` (already filtered by tenant) after the cursor ``after``, newest first."""
    position = decode_cursor(after) if after is not None else None
    if position is not None:
        created_at, object_id = position
        statement = statement.where(tuple_(model.created_at, model.id) < tuple_(created_at, object_id))
    statement = statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows: Sequence[Any] = session.scalars(statement).all()
    items = list(rows[:limit])
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)
