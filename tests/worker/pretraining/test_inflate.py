"""Decompression under caps: the size and ratio caps are checked piece by piece while gzip inflates, so a
bomb is refused after one piece of output; honest data, small files and multi-member gzip pass."""

from __future__ import annotations

import gzip
import io
import zlib

import pytest

from worker.pretraining.inflate import (
    MAX_OUTPUT_PIECE,
    RATIO_GRACE_BYTES,
    GzipError,
    GzipInflater,
    InflateLimitExceeded,
    InflateLimits,
    InflatingReader,
)


def newlines_gzip(size: int) -> bytes:
    """``size`` newlines, gzipped (about 1,000 to 1): a bomb in miniature, built in a few milliseconds."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    return packer.compress(b"\n" * size) + packer.flush()


def inflate_all(data: bytes, limits: InflateLimits, chunk_size: int = 1 << 20) -> tuple[bytes, GzipInflater]:
    inflater = GzipInflater(limits)
    out = bytearray()
    for start in range(0, len(data), chunk_size):
        for piece in inflater.feed(data[start : start + chunk_size]):
            assert len(piece) <= MAX_OUTPUT_PIECE
            out += piece
    return bytes(out), inflater


def test_a_bomb_is_refused_after_one_piece_of_output() -> None:
    bomb = newlines_gzip(16 << 20)
    inflater = GzipInflater(InflateLimits(max_bytes=1 << 40, max_ratio=100))
    with pytest.raises(InflateLimitExceeded) as info:
        for _ in inflater.feed(bomb):
            pass
    assert info.value.cap == "ratio" and info.value.limit == 100
    assert inflater.decompressed <= MAX_OUTPUT_PIECE  # a few megabytes of work, not 16
    assert "100 times its compressed size" in str(info.value)


def test_the_size_cap_counts_every_member() -> None:
    text = b"one line of honest text\n" * 50_000  # 1.2 MB
    packed = gzip.compress(text[:600_000]) + gzip.compress(text[600_000:]) + b"\x00" * 4
    out, inflater = inflate_all(packed, InflateLimits(max_bytes=len(text)), chunk_size=1000)
    assert out == text and inflater.decompressed == len(text) and inflater.compressed == len(packed)
    with pytest.raises(InflateLimitExceeded) as info:
        inflate_all(packed, InflateLimits(max_bytes=len(text) - 1), chunk_size=1000)
    assert (info.value.cap, info.value.limit) == ("size", len(text) - 1)


def test_the_ratio_is_judged_only_past_the_grace() -> None:
    small = newlines_gzip(RATIO_GRACE_BYTES)  # compresses about 1,000 times, but is small
    out, _ = inflate_all(small, InflateLimits(max_ratio=2))
    assert len(out) == RATIO_GRACE_BYTES
    with pytest.raises(InflateLimitExceeded):
        inflate_all(newlines_gzip(RATIO_GRACE_BYTES + 1), InflateLimits(max_ratio=2))


def test_corrupt_and_truncated_data() -> None:
    packed = gzip.compress(b"some text\n" * 100)
    with pytest.raises(GzipError):
        inflate_all(packed + b"not gzip", InflateLimits())
    inflater = GzipInflater()
    list(inflater.feed(packed[:-5]))
    assert inflater.in_member
    list(inflater.feed(packed[-5:]))
    assert not inflater.in_member


def test_the_reader_inflates_a_file_under_the_limits() -> None:
    text = b"a line\n" * 300_000
    reader = io.BufferedReader(InflatingReader(io.BytesIO(gzip.compress(text)), chunk_size=4096))
    assert reader.read() == text
    bomb = io.BufferedReader(
        InflatingReader(io.BytesIO(newlines_gzip(16 << 20)), InflateLimits(max_ratio=100))
    )
    with pytest.raises(InflateLimitExceeded):
        bomb.read()
    truncated = io.BufferedReader(InflatingReader(io.BytesIO(gzip.compress(text)[:-20])))
    with pytest.raises(GzipError, match="truncated"):
        truncated.read()
