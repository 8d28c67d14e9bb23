"""Decompression under caps, checked while the output is produced: a small upload that inflates to
gigabytes (a "gzip bomb", a zip of zeros) is refused after a few megabytes of work, not after minutes.

Two caps (:class:`InflateLimits`), checked after every piece of output and before it is handed on:

- the decompressed size;
- the ratio of the bytes decompressed so far to the compressed bytes consumed so far, judged only past
  :data:`RATIO_GRACE_BYTES` of output (a small file may compress far better than any large one does).
  Text compresses 3 to 10 times with gzip, safetensors weights hardly at all; deflate's own ceiling is
  about 1,032.

:class:`GzipInflater` inflates a gzip stream pushed in chunks (the corpus reader), :class:`InflatingReader`
is a file over one (tar.gz checkpoint archives); zip members are counted by the checkpoint extraction with
:meth:`InflateLimits.check`. Only the standard library: the API imports this.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

__all__ = [
    "MAX_OUTPUT_PIECE",
    "RATIO_GRACE_BYTES",
    "GzipError",
    "GzipInflater",
    "InflateLimitExceeded",
    "InflateLimits",
    "InflatingReader",
]

# Output is produced at most this much at a time, so one small compressed chunk cannot make a call
# allocate gigabytes before a cap is checked.
MAX_OUTPUT_PIECE = 4 << 20
RATIO_GRACE_BYTES = 1 << 20

Cap = Literal["size", "ratio"]


class InflateLimitExceeded(ValueError):
    """The data inflates beyond a cap; ``cap`` says which (``"size"`` or ``"ratio"``), ``limit`` its value."""

    def __init__(self, cap: Cap, limit: float, *, decompressed: int, compressed: int) -> None:
        if cap == "size":
            message = f"it is larger than {limit:,.0f} bytes once decompressed"
        else:
            message = (
                f"it decompresses to more than {limit:g} times its compressed size ({compressed:,} "
                f"compressed bytes gave {decompressed:,})"
            )
        super().__init__(message)
        self.cap: Cap = cap
        self.limit = limit
        self.decompressed = decompressed
        self.compressed = compressed


@dataclass(frozen=True)
class InflateLimits:
    """``max_bytes``: the most decompressed bytes; ``max_ratio``: the most decompressed bytes per compressed
    byte consumed. None: no cap."""

    max_bytes: int | None = None
    max_ratio: float | None = None

    def check(self, decompressed: int, compressed: int) -> None:
        """Raise :class:`InflateLimitExceeded` if ``decompressed`` bytes out of ``compressed`` break a cap."""
        if self.max_bytes is not None and decompressed > self.max_bytes:
            raise InflateLimitExceeded(
                "size", self.max_bytes, decompressed=decompressed, compressed=compressed
            )
        if (
            self.max_ratio is not None
            and decompressed > RATIO_GRACE_BYTES
            and decompressed > self.max_ratio * compressed
        ):
            raise InflateLimitExceeded(
                "ratio", self.max_ratio, decompressed=decompressed, compressed=compressed
            )


class GzipError(ValueError):
    """The gzip data is corrupt; ``str()`` is zlib's reason."""


class GzipInflater:
    """Inflates gzip data pushed in chunks of any size: one member or several concatenated (``cat a.gz
    b.gz`` is a valid gzip file), zero padding after a member accepted as gzip tools do.

    ``feed`` yields the output in pieces of at most :data:`MAX_OUTPUT_PIECE` bytes, each checked against
    ``limits`` before it is yielded; exhaust it before feeding more. ``in_member``: the data so far ends
    inside a member (at the end of the input: truncated).
    """

    def __init__(self, limits: InflateLimits | None = None) -> None:
        self.limits = limits or InflateLimits()
        self.compressed = 0  # bytes consumed
        self.decompressed = 0
        self._inflater: zlib._Decompress | None = None  # of the member in progress

    @property
    def in_member(self) -> bool:
        return self._inflater is not None

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._inflater is None:
                rest = data.lstrip(b"\x00")
                self.compressed += len(data) - len(rest)
                data = rest
                if not data:
                    return
                self._inflater = zlib.decompressobj(wbits=31)
            inflater = self._inflater
            while True:
                try:
                    out = inflater.decompress(data, MAX_OUTPUT_PIECE)
                except zlib.error as exc:
                    raise GzipError(str(exc)) from None
                rest = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                self.compressed += len(data) - len(rest)
                data = rest
                if out:
                    self.decompressed += len(out)
                    self.limits.check(self.decompressed, self.compressed)
                    yield out
                if inflater.eof:
                    break
                if not data and len(out) < MAX_OUTPUT_PIECE:
                    return  # all consumed, nothing held back: wait for more input
            self._inflater = None


class InflatingReader(io.RawIOBase):
    """The decompressed bytes of the gzip file ``raw``, read as a file (wrap it in ``io.BufferedReader``),
    with ``limits`` checked as it inflates. Raises :class:`GzipError` for corrupt or truncated data."""

    def __init__(self, raw: BinaryIO, limits: InflateLimits | None = None, *, chunk_size: int = 1 << 20):
        super().__init__()
        self._raw = raw
        self._chunk_size = chunk_size
        self.inflater = GzipInflater(limits)
        self._pieces: Iterator[bytes] = iter(())
        self._piece = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._piece:
            piece = next(self._pieces, None)
            if piece is not None:
                self._piece = memoryview(piece)
                continue
            data = self._raw.read(self._chunk_size)
            if not data:
                if self.inflater.in_member:
                    raise GzipError("the data ends inside a compressed stream (truncated)")
                return 0
            self._pieces = self.inflater.feed(data)
        size = min(len(buffer), len(self._piece))
        buffer[:size] = self._piece[:size]
        self._piece = self._piece[size:]
        return size
