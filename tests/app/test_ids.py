"""Ids and API keys: their prefixes, lengths and hashes."""

from __future__ import annotations

from app.ids import hash_api_key, new_api_key, new_id


def test_ids_and_keys() -> None:
    assert new_id("corp").startswith("corp_") and len(new_id("corp")) == 29
    key = new_api_key()
    assert key.startswith("bpt_") and len(key) == 47
    assert hash_api_key(key) == hash_api_key(key) and len(hash_api_key(key)) == 64
