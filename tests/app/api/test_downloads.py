"""Byte ranges and entity tags of downloads (RFC 9110): what is served, what is refused and how."""

from __future__ import annotations

import pytest

from app.api.downloads import RangeNotSatisfiable, etag_matches, parse_byte_ranges
from app.errors import BadRequest


@pytest.mark.parametrize(
    ("header", "ranges"),
    [
        ("bytes=0-99", [(0, 99)]),
        ("bytes=100-", [(100, 999)]),
        ("bytes=-200", [(800, 999)]),
        ("bytes=-5000", [(0, 999)]),  # a suffix longer than the file: the whole file
        ("bytes=990-5000", [(990, 999)]),  # past the end: up to the end
        ("BYTES = 0-0, 10-19", [(0, 0), (10, 19)]),
    ],
)
def test_ranges_of_a_1000_byte_file(header: str, ranges: list[tuple[int, int]]) -> None:
    assert parse_byte_ranges(header, 1000) == ranges


@pytest.mark.parametrize("header", ["bytes", "items=0-1", "bytes=", "bytes=-", "bytes=a-b", "bytes=10-5"])
def test_malformed_ranges_are_bad_requests_naming_range(header: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_byte_ranges(header, 1000)
    assert info.value.param == "Range"


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=-0", "bytes=0-1,1000-"])
def test_ranges_past_the_end_are_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_ranges(header, 1000)


def test_etags() -> None:
    assert (
        etag_matches('"abc"', '"abc"') and etag_matches('W/"abc", "x"', '"abc"') and etag_matches("*", '"a"')
    )
    assert not etag_matches(None, '"abc"') and not etag_matches('"abd"', '"abc"')
