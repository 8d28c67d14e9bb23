"""Ids and API keys: their prefixes, lengths, hashes, and the pattern every id matches."""

from __future__ import annotations

import re

from app.ids import ID_PATTERN, hash_api_key, new_api_key, new_id


def test_ids_and_keys() -> None:
    assert new_id("corp").startswith("corp_") and len(new_id("corp")) == 29
    key = new_api_key()
    assert key.startswith("bpt_") and len(key) == 47
    assert hash_api_key(key) == hash_api_key(key) and len(hash_api_key(key)) == 64


def test_every_id_matches_the_id_pattern() -> None:
    for prefix in ("ten", "key", "corp", "ckpt", "run"):
        assert all(re.fullmatch(ID_PATTERN, new_id(prefix)) for _ in range(200))
    for not_an_id in ["", "run_", "_abc", "run abc", "run_a/b", "run_\x00", "RUN_abc"]:
        assert not re.fullmatch(ID_PATTERN, not_an_id)
