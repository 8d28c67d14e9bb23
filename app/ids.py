"""Identifiers and API keys: prefixed random strings, so an id says what it names."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["API_KEY_PREFIX", "ID_PATTERN", "hash_api_key", "new_api_key", "new_id"]

API_KEY_PREFIX = "bpt_"
# What new_id makes (and any id of it): a prefix, "_", url-safe characters.
ID_PATTERN = r"^[a-z]+_[A-Za-z0-9_-]+$"


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 24 url-safe random characters (144 bits), e.g. ``corp_3q2...``."""
    return f"{prefix}_{secrets.token_urlsafe(18)}"


def new_api_key() -> str:
    """``bpt_`` + 43 url-safe random characters (256 bits). Shown once; only its hash is stored."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """sha256 hex digest: keys are random and long, so a fast unsalted hash is enough to make a stolen
    table useless, and it allows an indexed lookup."""
    return hashlib.sha256(key.encode()).hexdigest()
