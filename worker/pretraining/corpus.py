"""Streaming reader and validator for BERT pre-training corpora.

The format: UTF-8 text, one sentence per line, documents separated by one or more blank lines
(whitespace-only lines, and lines of only invisible format characters such as a stray byte-order mark,
count as blank), as ``.txt`` or gzip-compressed (detected by its magic bytes, not the file name). Lines
are normalized to Unicode NFC as they are read (the digest stays that of the bytes given).
Next-sentence prediction pairs consecutive sentences of a document with random sentences of *another*
document, so it needs at least two documents (a corpus of one document is reported, and trains MLM-only),
and documents of one sentence contribute no "is next" pairs.

Everything here is push-based and bounded in memory so that the web API can validate an upload chunk by
chunk while it streams in, and the data preparation can consume documents (``on_document``) in the same
single pass that computes the statistics. Only the standard library (and pydantic, for the warning type
shared with the rest of the run's reports) is used: the API must not pay for importing torch or numpy.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.pretraining.inflate import GzipError, GzipInflater, InflateLimitExceeded, InflateLimits
from worker.pretraining.records import RunWarning

__all__ = [
    "NSP_MIN_DOCUMENTS",
    "CorpusFormatError",
    "CorpusReader",
    "CorpusReport",
    "CorpusScanner",
    "CorpusStats",
    "iter_documents",
    "scan_corpus",
    "sentence_count_warnings",
    "textless_documents_warning",
]

DEFAULT_MAX_LINE_CHARS = 100_000
# Next-sentence prediction draws its random second segments from another document.
NSP_MIN_DOCUMENTS = 2
DEFAULT_CHUNK_SIZE = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_TERMINATOR = re.compile(rb"\r\n|\r|\n")
# A long run of blank lines (whitespace only: ``\s`` is what ``str.strip()`` removes), from the terminator of
# the line before it to its own last terminator, at least 64 characters: skipped in one step rather than
# line by line, so that a file of a billion newlines does not cost a billion turns of the line loop. (The
# single-character repeat runs in C and fails at once on the usual blank line between two documents.)
_BLANK_RUN = re.compile(r"\n\s{62,}\n")

# More than this share of one-sentence documents (with enough documents to judge) means the blank lines
# almost certainly separate sentences rather than documents.
_BLANK_LINE_SHARE = 0.8
_BLANK_LINE_MIN_DOCUMENTS = 5
# Documents without text are named by their first lines in the warning, up to this many.
_NAMED_DOCUMENTS = 5

# Scripts written without spaces between words (Thai, Lao, Tibetan, Myanmar, Khmer, kana, CJK
# ideographs): a BERT tokenizer sees no words in them (CJK: every ideograph is a word), so whole-word
# masking cannot work on them. Counted so that the data preparation can tell.
_UNSPACED_SCRIPTS = re.compile(
    "[\u0e00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
)

_HISTOGRAM_BUCKETS: tuple[tuple[int, float, str], ...] = (
    (1, 1, "1"),
    (2, 2, "2"),
    (3, 4, "3-4"),
    (5, 8, "5-8"),
    (9, 16, "9-16"),
    (17, math.inf, "17+"),
)


class CorpusFormatError(ValueError):
    """The corpus cannot be used as it is; ``str()`` says where and how to fix it.

    ``line`` is 1-based; ``byte_offset`` counts bytes of the decompressed stream (including a BOM) and
    points at the start of the offending line, or at the bad byte for ``invalid_utf8``. ``code`` is a
    stable machine-readable name for the API.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_corpus",
        line: int | None = None,
        byte_offset: int | None = None,
        path: str | None = None,
    ) -> None:
        # Every argument but the message has a default so that the error survives pickling (Celery),
        # which rebuilds it from ``args`` and restores the attributes from ``__dict__``.
        super().__init__(message)
        self.message = message
        self.code = code
        self.line = line
        self.byte_offset = byte_offset
        self.path = path

    def location(self) -> str:
        """``path, line N (byte B)`` with whatever parts are known, or ``""``."""
        where = ", ".join(part for part in (self.path, f"line {self.line}" if self.line else None) if part)
        if self.byte_offset is not None:
            where = f"{where} (byte {self.byte_offset})" if where else f"byte {self.byte_offset}"
        return where

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "line": self.line,
            "byte_offset": self.byte_offset,
            "path": self.path,
            "detail": str(self),
        }


@dataclass
class CorpusStats:
    """Sizes of the corpus. ``bytes`` and ``sha256`` are of the raw input as given (compressed for gzip);
    ``characters`` counts sentence text after stripping surrounding whitespace and NFC normalization.
    ``nfc_normalized_lines``: lines that were not in Unicode NFC (and were normalized);
    ``invisible_lines``: lines of only format characters, read as blank lines;
    ``unspaced_script_characters``: characters of scripts written without spaces (CJK, Thai, ...)."""

    bytes: int
    sha256: str
    documents: int
    sentences: int
    characters: int
    sentences_per_document: dict[str, Any] = field(default_factory=dict)
    nfc_normalized_lines: int = 0
    invisible_lines: int = 0
    unspaced_script_characters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CorpusReport:
    stats: CorpusStats
    warnings: list[RunWarning] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": self.stats.to_dict(),
            "warnings": [w.model_dump(exclude_none=True) for w in self.warnings],
        }


class CorpusScanner:
    """Incremental parser and validator: ``feed()`` raw bytes in chunks of any size, then ``finish()``.

    Chunk boundaries may fall anywhere (inside a UTF-8 character, a CRLF pair, the gzip stream). Memory
    stays bounded: one pending line (at most ``4 * max_line_chars + 4`` bytes), the current document, and
    an 8-byte hash per document for duplicate detection. Errors are raised as soon as they are seen, as
    :class:`CorpusFormatError`; after an error the scanner keeps raising it.

    ``limits`` caps the text (decompressed) size and the gzip compression ratio, checked as the data
    inflates: :class:`~worker.pretraining.inflate.InflateLimitExceeded` (kept and raised again like a
    format error). The text of a plain file counts as decompressed at a ratio of 1.

    ``on_document(sentences, first_line)`` is called for each complete document with its stripped
    sentences and the 1-based line number of its first sentence; the list is not reused afterwards.
    """

    def __init__(
        self,
        *,
        max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
        path: str | None = None,
        on_document: Callable[[list[str], int], None] | None = None,
        limits: InflateLimits | None = None,
    ) -> None:
        if max_line_chars < 1:
            raise ValueError("max_line_chars must be at least 1")
        self.max_line_chars = max_line_chars
        self.path = path
        self.on_document = on_document
        self.limits = limits or InflateLimits()
        self._max_pending_bytes = 4 * max_line_chars + 4

        # Raw layer: what the caller fed.
        self._raw_bytes = 0
        self._sha256 = hashlib.sha256()
        self._magic = b""  # the first raw bytes, until there are enough to tell gzip from text
        self._gzip: bool | None = None
        self._inflater = GzipInflater(self.limits)

        # Text layer: the decompressed byte stream.
        self._head = b""  # the first decompressed bytes, until a BOM can be ruled in or out
        self._head_done = False
        self._pending = b""  # an unterminated line
        self._offset = 0  # decompressed offset of the start of ``_pending``
        self._line = 1  # line number of ``_pending``
        self._skip_lf = False  # the last line ended with "\r": a "\n" right after belongs to it

        # Document layer.
        self._doc: list[str] = []
        self._doc_line = 0
        self._documents = 0
        self._sentences = 0
        self._characters = 0
        self._sentence_counts: Counter[int] = Counter()
        self._one_sentence = 0
        self._first_one_sentence_line: int | None = None
        self._seen: set[int] = set()
        self._duplicates = 0
        self._first_duplicate_line: int | None = None
        self._normalized = 0  # lines not in NFC
        self._first_normalized_line: int | None = None
        self._invisible = 0  # lines of only format characters (read as blank)
        self._first_invisible_line: int | None = None
        self._doc_textless = 0  # sentences of the current document without a visible character
        self._textless_documents = 0
        self._textless_document_lines: list[int] = []  # the first few
        self._unspaced = 0

        self._error: CorpusFormatError | InflateLimitExceeded | None = None
        self._report: CorpusReport | None = None

    # -- public -------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Consume the next raw bytes of the file (plain or gzip)."""
        if self._report is not None:
            raise RuntimeError("feed() after finish()")
        if self._error is not None:
            raise self._error
        if not chunk:
            return
        chunk = bytes(chunk)
        self._raw_bytes += len(chunk)
        self._sha256.update(chunk)
        self._guarded(self._feed_raw, chunk)

    def finish(self) -> CorpusReport:
        """Check the end of the input and return the report; raises if the corpus is unusable."""
        if self._report is not None:
            return self._report
        if self._error is not None:
            raise self._error
        self._guarded(self._finish)
        assert self._report is not None
        return self._report

    @property
    def documents(self) -> int:
        """Documents completed so far."""
        return self._documents

    # -- raw / gzip layer ---------------------------------------------------------------------------

    def _guarded(self, step: Callable[..., None], *args: bytes) -> None:
        try:
            step(*args)
        except CorpusFormatError as exc:
            if exc.path is None:
                exc.path = self.path
            self._error = exc
            raise
        except InflateLimitExceeded as exc:
            self._error = exc
            raise

    def _feed_raw(self, data: bytes) -> None:
        if self._gzip is None:
            self._magic += data
            if len(self._magic) < len(_GZIP_MAGIC) and _GZIP_MAGIC.startswith(self._magic):
                return
            self._gzip = self._magic.startswith(_GZIP_MAGIC)
            data, self._magic = self._magic, b""
        if self._gzip:
            self._feed_gzip(data)
        else:
            self.limits.check(self._raw_bytes, self._raw_bytes)
            self._feed_decompressed(data)

    def _feed_gzip(self, data: bytes) -> None:
        try:
            for out in self._inflater.feed(data):  # each piece within the limits
                self._feed_decompressed(out)
        except GzipError as exc:
            raise CorpusFormatError(
                f"the gzip data is corrupt ({exc}); re-create the file with gzip, or upload it uncompressed",
                code="invalid_gzip",
            ) from None

    # -- text layer ---------------------------------------------------------------------------------

    def _feed_decompressed(self, data: bytes) -> None:
        if not self._head_done:
            self._head += data
            if len(self._head) < len(codecs.BOM_UTF8) and codecs.BOM_UTF8.startswith(self._head):
                return
            data, self._head, self._head_done = self._head, b"", True
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
                self._offset += len(codecs.BOM_UTF8)
        self._feed_text(data)

    def _feed_text(self, data: bytes) -> None:
        """Split off the complete lines of ``pending + data`` and keep the unterminated rest pending."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:  # the "\n" of a CRLF split across chunks
                data = data[1:]
                self._offset += 1
        if not data:
            return
        buf = self._pending + data if self._pending else data
        if b"\x00" in data:
            start = _line_start(buf, len(buf) - len(data) + data.index(b"\x00"))
            self._pending = b""
            self._emit_lines(buf[:start])  # earlier lines first, so that the first problem is reported
            raise CorpusFormatError(
                "NUL byte (0x00): this looks like binary content (a PDF, an office document, UTF-16 or "
                "UTF-32 text?); the corpus must be plain UTF-8 text",
                code="nul_byte",
                line=self._line,
                byte_offset=self._offset,
            )
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
        if cut:
            self._pending = b""
            self._emit_lines(buf[:cut])
            self._skip_lf = buf[cut - 1] == 0x0D
            buf = buf[cut:]
        self._pending = buf
        if len(buf) > self._max_pending_bytes:
            raise self._too_long(self._line, self._offset, None)

    def _emit_lines(self, complete: bytes) -> None:
        """Decode and consume ``complete``: whole lines, each with its terminator (or nothing)."""
        try:
            text = complete.decode("utf-8")
        except UnicodeDecodeError as exc:
            start = _line_start(complete, exc.start)
            self._emit_lines(complete[:start])
            raise CorpusFormatError(
                f"invalid UTF-8 (byte 0x{complete[exc.start]:02x}, {exc.reason}); the corpus must be UTF-8: "
                "re-encode it (e.g. `iconv -f latin1 -t utf-8 corpus.txt > corpus.utf8.txt`)",
                code="invalid_utf8",
                line=self._line,
                byte_offset=self._offset + exc.start - start,
            ) from None
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        stretches = _stretches(text)
        if len(text) > self.max_line_chars:
            self._check_line_lengths(complete, text, stretches)
        ascii_only = text.isascii()
        if not ascii_only:
            self._unspaced += _UNSPACED_SCRIPTS.subn("", text)[1]
        normalize = not ascii_only and not unicodedata.is_normalized("NFC", text)
        for stretch in stretches:
            if isinstance(stretch, list):
                self._consume(stretch, normalize=normalize)
                self._line += len(stretch)
            else:  # a long run of blank lines: one document boundary
                if self._doc:
                    self._close_document(self._doc)
                    self._doc = []
                self._line += stretch.blank_lines
        self._offset += len(complete)

    def _check_line_lengths(self, complete: bytes, text: str, stretches: list[list[str] | _BlankRun]) -> None:
        """Before the block is consumed: at its first line over the limit, consume the lines before it and
        raise."""
        limit = self.max_line_chars
        first = 0  # index in the block of the stretch's first line
        for stretch in stretches:
            if isinstance(stretch, _BlankRun):
                found = stretch.first_longer_line(text, limit)
            else:
                found = _first_longer_line(stretch, limit)
            if found is not None:
                index, length = found
                self._emit_lines(complete[: _start_of_line(complete, first + index)])
                raise self._too_long(self._line, self._offset, length)
            first += stretch.blank_lines if isinstance(stretch, _BlankRun) else len(stretch)

    def _too_long(self, line: int, byte_offset: int, length: int | None) -> CorpusFormatError:
        if length is None:  # known to be too long before its end arrived
            size = f"no line break in {self._max_pending_bytes:,} bytes"
        else:
            size = f"{length:,} characters"
        return CorpusFormatError(
            f"line too long ({size}; the limit is {self.max_line_chars:,} characters): put one sentence "
            "per line (is a whole document, or the whole file, on one line?)",
            code="line_too_long",
            line=line,
            byte_offset=byte_offset,
        )

    # -- document layer -----------------------------------------------------------------------------

    def _consume(self, lines: list[str], *, normalize: bool) -> None:
        # The hot loop: one strip, one test of the first character and one append per line. ``normalize``:
        # some line of this block is not in NFC.
        doc = self._doc
        for number, line in enumerate(lines, self._line):
            sentence = line.strip()
            if sentence and not sentence[0].isprintable():
                sentence = self._without_visible_start(sentence, number)
            if sentence:
                if normalize and not unicodedata.is_normalized("NFC", sentence):
                    sentence = unicodedata.normalize("NFC", sentence)
                    self._normalized += 1
                    if self._first_normalized_line is None:
                        self._first_normalized_line = number
                if not doc:
                    self._doc_line = number
                doc.append(sentence)
            elif doc:
                self._close_document(doc)
                doc = []
        self._doc = doc

    def _without_visible_start(self, sentence: str, number: int) -> str:
        """A stripped line that starts with a character that is not printable: ``""`` (a blank line) when
        it holds only format characters (a byte-order mark, zero-width spaces), else the line, counted
        as without text when no character in it is visible (control, format, private-use characters)."""
        only_format = True
        for character in sentence:
            category = unicodedata.category(character)
            if category[0] not in "CZ":
                return sentence  # a letter, mark, number, punctuation or symbol
            if category != "Cf" and not character.isspace():
                only_format = False
        if only_format:
            self._invisible += 1
            if self._first_invisible_line is None:
                self._first_invisible_line = number
            return ""
        self._doc_textless += 1
        return sentence

    def _close_document(self, sentences: list[str]) -> None:
        count = len(sentences)
        first_line = self._doc_line
        if self._doc_textless == count:
            self._textless_documents += 1
            if len(self._textless_document_lines) < _NAMED_DOCUMENTS:
                self._textless_document_lines.append(first_line)
        self._doc_textless = 0
        text = "\n".join(sentences)
        self._documents += 1
        self._sentences += count
        self._characters += len(text) - (count - 1)
        self._sentence_counts[count] += 1
        if count == 1:
            self._one_sentence += 1
            if self._first_one_sentence_line is None:
                self._first_one_sentence_line = first_line
        key = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        if key in self._seen:
            self._duplicates += 1
            if self._first_duplicate_line is None:
                self._first_duplicate_line = first_line
        else:
            self._seen.add(key)
        if self.on_document is not None:
            self.on_document(sentences, first_line)

    # -- end ----------------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self._gzip is None:  # fewer raw bytes than the gzip magic
            self._gzip = False
            if self._magic:
                self._feed_decompressed(self._magic)
            self._magic = b""
        if self._inflater.in_member:
            raise CorpusFormatError(
                "the gzip data is truncated (the file ends inside a compressed stream); the upload or "
                "copy was probably cut short: compress and upload it again",
                code="invalid_gzip",
            )
        if not self._head_done:
            self._head_done = True
            head, self._head = self._head, b""
            self._feed_text(head)  # shorter than a BOM
        if self._pending:
            self._emit_lines(self._pending + b"\n")
            self._pending = b""
        if self._doc:
            self._close_document(self._doc)
            self._doc = []
        if self._documents == 0:
            raise CorpusFormatError(
                "empty corpus: no text, only blank lines or nothing at all; write one sentence per line "
                "and a blank line between documents",
                code="empty_corpus",
            )
        if self._textless_documents == self._documents:
            raise CorpusFormatError(
                "no text: every line holds only control or invisible characters (is this a binary file, "
                "or text in another encoding?); the corpus must be plain UTF-8 text",
                code="no_text",
            )
        self._report = CorpusReport(stats=self._stats(), warnings=self._warnings())

    def _stats(self) -> CorpusStats:
        return CorpusStats(
            bytes=self._raw_bytes,
            sha256=self._sha256.hexdigest(),
            documents=self._documents,
            sentences=self._sentences,
            characters=self._characters,
            sentences_per_document=_distribution(self._sentence_counts),
            nfc_normalized_lines=self._normalized,
            invisible_lines=self._invisible,
            unspaced_script_characters=self._unspaced,
        )

    def _warnings(self) -> list[RunWarning]:
        warnings: list[RunWarning] = []
        documents, single = self._documents, self._one_sentence
        if documents == 1:
            warnings.append(
                RunWarning(
                    code="single_document",
                    count=1,
                    message=(
                        "the corpus is one document: next-sentence prediction needs at least two (its "
                        "random second segments come from another document), so train it with nsp: false "
                        "(masked-LM only), or separate its documents with blank lines."
                    ),
                    first_line=self._doc_line,
                )
            )
        warnings.extend(sentence_count_warnings(documents, single, self._first_one_sentence_line))
        if self._duplicates:
            warnings.append(
                RunWarning(
                    code="duplicate_documents",
                    count=self._duplicates,
                    message=(
                        f"{self._duplicates} document(s) repeat an earlier document exactly; repeated text "
                        "is over-weighted in training and invites memorisation. Remove the duplicates."
                    ),
                    first_line=self._first_duplicate_line,
                )
            )
        if self._textless_documents:
            warnings.append(
                textless_documents_warning(self._textless_documents, self._textless_document_lines)
            )
        if self._invisible:
            warnings.append(
                RunWarning(
                    code="invisible_lines",
                    count=self._invisible,
                    message=(
                        f"{self._invisible} line(s) hold only invisible format characters (a byte-order "
                        "mark between concatenated files, zero-width spaces): they were read as blank "
                        "lines, i.e. as document boundaries. Remove them if they sit inside a document."
                    ),
                    first_line=self._first_invisible_line,
                )
            )
        if self._normalized:
            warnings.append(
                RunWarning(
                    code="unnormalized_text",
                    count=self._normalized,
                    message=(
                        f"{self._normalized} line(s) were not in Unicode NFC (decomposed accents, as some "
                        "macOS tools and PDF extractors write them, tokenize to [UNK] or to other pieces "
                        "with many vocabularies); they were normalized to NFC. The corpus digest is still "
                        "that of the file as given."
                    ),
                    first_line=self._first_normalized_line,
                )
            )
        return warnings


class CorpusReader:
    """Iterate over the documents of a corpus file lazily; ``.report`` is available afterwards.

    Problems are raised as :class:`CorpusFormatError` at the point where they occur, after the documents
    before them were yielded; the end checks of :meth:`CorpusScanner.finish` run when the file is
    exhausted. Each iteration reads the file again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.path = os.fspath(path)
        self.max_line_chars = max_line_chars
        self.chunk_size = chunk_size
        self._report: CorpusReport | None = None

    @property
    def report(self) -> CorpusReport:
        if self._report is None:
            raise RuntimeError("the report is available once the documents have been iterated to the end")
        return self._report

    def __iter__(self) -> Iterator[list[str]]:
        ready: list[list[str]] = []
        scanner = CorpusScanner(
            max_line_chars=self.max_line_chars,
            path=self.path,
            on_document=lambda sentences, _line: ready.append(sentences),
        )
        # A problem is raised only after the documents completed before it were yielded, including the
        # last one, completed by finish() just before it rejects the corpus as a whole.
        error: CorpusFormatError | None = None
        report: CorpusReport | None = None
        with open(self.path, "rb") as stream:
            while error is None and (chunk := stream.read(self.chunk_size)):
                try:
                    scanner.feed(chunk)
                except CorpusFormatError as exc:
                    error = exc
                yield from ready
                ready.clear()
        if error is None:
            try:
                report = scanner.finish()
            except CorpusFormatError as exc:
                error = exc
            yield from ready
            ready.clear()
        if error is not None:
            raise error
        self._report = report


def scan_corpus(
    path: str | os.PathLike[str],
    *,
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    on_document: Callable[[list[str], int], None] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> CorpusReport:
    """Validate a corpus file in one streaming pass and return its statistics and warnings."""
    scanner = CorpusScanner(max_line_chars=max_line_chars, path=os.fspath(path), on_document=on_document)
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            scanner.feed(chunk)
    return scanner.finish()


def iter_documents(
    path: str | os.PathLike[str], *, max_line_chars: int = DEFAULT_MAX_LINE_CHARS
) -> Iterator[list[str]]:
    """Documents (lists of stripped sentences) of a corpus file, read lazily; see :class:`CorpusReader`."""
    return iter(CorpusReader(path, max_line_chars=max_line_chars))


# -- helpers --------------------------------------------------------------------------------------------


SENTENCE_COUNT_WARNINGS = ("blank_line_after_every_sentence", "one_sentence_documents")


def sentence_count_warnings(documents: int, single: int, first_single_line: int | None) -> list[RunWarning]:
    """The warnings about documents of one sentence (:data:`SENTENCE_COUNT_WARNINGS`): made by the reader,
    and again by the data preparation when it split over-long lines into sentences."""
    warnings: list[RunWarning] = []
    if documents >= _BLANK_LINE_MIN_DOCUMENTS and single > _BLANK_LINE_SHARE * documents:
        warnings.append(
            RunWarning(
                code="blank_line_after_every_sentence",
                count=single,
                message=(
                    f"{single} of {documents} documents have a single sentence: the blank lines seem "
                    "to separate sentences, not documents. Next-sentence prediction pairs consecutive "
                    "sentences of a document, so almost no real pairs can be built. Put the sentences "
                    "of a document on consecutive lines and use blank lines only between documents."
                ),
                first_line=first_single_line,
            )
        )
    if single:
        warnings.append(
            RunWarning(
                code="one_sentence_documents",
                count=single,
                message=(
                    f"{single} document(s) have a single sentence; they give no next-sentence pairs "
                    "(only random second sentences for other documents). Merge them with related "
                    "text or drop them."
                ),
                first_line=first_single_line,
            )
        )
    return warnings


def textless_documents_warning(count: int, first_lines: list[int]) -> RunWarning:
    """``documents_without_text``: ``count`` documents with no usable text, the first of them at
    ``first_lines`` (the reader judges by Unicode category, the data preparation by the tokenizer)."""
    named = ", ".join(str(line) for line in first_lines[:_NAMED_DOCUMENTS])
    more = " ..." if count > len(first_lines[:_NAMED_DOCUMENTS]) else ""
    return RunWarning(
        code="documents_without_text",
        count=count,
        message=(
            f"{count} document(s) have no usable text (only control, zero-width or other invisible "
            f"characters, or characters the tokenizer removes): the documents starting at line(s) "
            f"{named}{more}. They are left out; remove them or fix how the text was extracted."
        ),
        first_line=first_lines[0] if first_lines else None,
    )


@dataclass(frozen=True)
class _BlankRun:
    """Lines ``start`` to ``end`` of a decoded block (the positions after the terminator of the line before
    the run and after its own last terminator), all blank."""

    start: int
    end: int
    blank_lines: int

    def first_longer_line(self, text: str, limit: int) -> tuple[int, int] | None:
        """``(index in the run, length)`` of its first line longer than ``limit`` characters, or None."""
        if self.end - self.start == self.blank_lines:
            return None  # newlines only (the common case)
        start = self.start  # of a line; the ones before it are within the limit
        while self.end - 1 - start > limit:
            # The lines that end in the next limit + 1 characters are short enough: jump past them.
            last = text.rfind("\n", start, start + limit + 1)
            if last < 0:
                return text.count("\n", self.start, start), text.index("\n", start) - start
            start = last + 1
        return None


def _first_longer_line(lines: list[str], limit: int) -> tuple[int, int] | None:
    """``(index, length)`` of the first of ``lines`` longer than ``limit`` characters, or None."""
    if not lines or max(map(len, lines)) <= limit:
        return None
    index = next(i for i, line in enumerate(lines) if len(line) > limit)
    return index, len(lines[index])


def _stretches(text: str) -> list[list[str] | _BlankRun]:
    """The lines of ``text`` (whole lines, each with its "\\n"), in order: lists of lines to read one by one,
    and the long runs of blank lines between them, skipped in one step (the regex and ``count`` run in C)."""
    stretches: list[list[str] | _BlankRun] = []
    start = 0
    for run in _BLANK_RUN.finditer(text):
        # The run's first "\n" ends the last line before it; its other lines are blank.
        stretches.append(text[start : run.start()].split("\n"))
        stretches.append(_BlankRun(run.start() + 1, run.end(), text.count("\n", run.start() + 1, run.end())))
        start = run.end()
    lines = text[start:].split("\n")
    lines.pop()  # "" after the final terminator
    stretches.append(lines)
    return stretches


def _line_start(buf: bytes, index: int) -> int:
    """Index in ``buf`` where the line holding ``buf[index]`` starts."""
    return max(buf.rfind(b"\n", 0, index), buf.rfind(b"\r", 0, index)) + 1


def _start_of_line(buf: bytes, line: int) -> int:
    """Index in ``buf`` where its 0-based ``line`` starts."""
    if line == 0:
        return 0
    for number, match in enumerate(_TERMINATOR.finditer(buf), 1):
        if number == line:
            return match.end()
    raise ValueError(f"no line {line} in buffer")


def _nth_smallest(ordered: list[tuple[int, int]], n: int) -> int:
    """The ``n``-th (0-based) smallest value of a multiset given as sorted ``(value, count)`` pairs."""
    seen = 0
    for value, count in ordered:
        seen += count
        if n < seen:
            return value
    raise IndexError(n)


def _distribution(counts: Counter[int]) -> dict[str, Any]:
    """Exact summary of sentences per document from a Counter (memory bounded by distinct values).

    ``median`` is the usual one (mean of the two middle values for an even count); ``p90`` is the
    nearest-rank 90th percentile: the smallest value that at least 90% of documents do not exceed.
    """
    histogram = {label: 0 for _, _, label in _HISTOGRAM_BUCKETS}
    total = sum(counts.values())
    if not total:
        return {"min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p90": 0, "histogram": histogram}
    ordered = sorted(counts.items())
    for value, count in ordered:
        label = next(label for low, high, label in _HISTOGRAM_BUCKETS if low <= value <= high)
        histogram[label] += count
    median = (_nth_smallest(ordered, (total - 1) // 2) + _nth_smallest(ordered, total // 2)) / 2
    return {
        "min": ordered[0][0],
        "max": ordered[-1][0],
        "mean": sum(value * count for value, count in ordered) / total,
        "median": median,
        "p90": _nth_smallest(ordered, math.ceil(0.9 * total) - 1),
        "histogram": histogram,
    }
