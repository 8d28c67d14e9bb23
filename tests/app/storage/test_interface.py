"""Storage keys: the unsafe ones are refused."""

from __future__ import annotations

import pytest

from app.storage import StorageKeyError, validate_key


@pytest.mark.parametrize(
    "key", ["", "/abs", "../up", "a/../b", "a//b", "./a", "a\\b", ".tmp/x", "a/.hidden", "a\x00"]
)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(StorageKeyError):
        validate_key(key)
