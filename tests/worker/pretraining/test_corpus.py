"""The streaming corpus reader/validator: exact statistics, positions of errors, chunking independence."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import pytest

from worker.pretraining.corpus import (
    CorpusFormatError,
    CorpusReader,
    CorpusReport,
    CorpusScanner,
    iter_documents,
    scan_corpus,
)
from worker.pretraining.inflate import InflateLimitExceeded, InflateLimits
from worker.pretraining.records import RunWarning

REPO_ROOT = Path(__file__).resolve().parents[3]

DOCUMENTS = [
    [
        "The lighthouse keeper wound the clock every evening.",
        "Its brass gears had not been replaced in forty years.",
    ],
    [
        "A small boat drifted past the harbour wall.",
        "Nobody on the pier noticed it.",
        "The tide carried it out before dawn.",
    ],
    [
        "Café owners opened their shutters at seven.",
        "Bread arrived warm from the bakery next door.",
    ],
]
TEXT = "\n\n".join("\n".join(doc) for doc in DOCUMENTS) + "\n"
DATA = TEXT.encode("utf-8")
# Sentence lengths 52 + 53 + 43 + 30 + 36 + 43 + 45; the "é" is one character but two bytes.
CHARACTERS = 302


def scan_bytes(data: bytes, chunk_size: int | None = None, **kwargs) -> CorpusReport:
    scanner = CorpusScanner(**kwargs)
    if chunk_size is None:
        scanner.feed(data)
    else:
        for i in range(0, len(data), chunk_size):
            scanner.feed(data[i : i + chunk_size])
    return scanner.finish()


def documents_of(data: bytes, chunk_size: int | None = None) -> list[tuple[list[str], int]]:
    seen: list[tuple[list[str], int]] = []
    scanner = CorpusScanner(on_document=lambda sentences, line: seen.append((sentences, line)))
    if chunk_size is None:
        scanner.feed(data)
    else:
        for i in range(0, len(data), chunk_size):
            scanner.feed(data[i : i + chunk_size])
    scanner.finish()
    return seen


def error_of(data: bytes, chunk_size: int | None = None, **kwargs) -> CorpusFormatError:
    with pytest.raises(CorpusFormatError) as info:
        scan_bytes(data, chunk_size, **kwargs)
    return info.value


def two_docs(*lines: str) -> bytes:
    """``lines`` as the first document plus a harmless second one, so that end checks pass."""
    return ("\n".join(lines) + "\n\nOne more document.\nWith a second sentence.\n").encode()


# -- statistics ---------------------------------------------------------------------------------------


def test_stats_of_a_small_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(DATA)
    report = scan_corpus(path)
    stats = report.stats
    assert stats.bytes == 312 == len(DATA)
    assert stats.sha256 == hashlib.sha256(DATA).hexdigest()
    assert (stats.documents, stats.sentences, stats.characters) == (3, 7, CHARACTERS)
    assert report.warnings == []
    as_dict = report.to_dict()
    assert as_dict["stats"]["documents"] == 3
    assert as_dict["warnings"] == []


def test_sentences_per_document_distribution() -> None:
    counts = [1, 2, 2, 3, 5, 9, 17, 4, 2, 2]
    text = "\n\n".join(
        "\n".join(f"Document {d} sentence {s}." for s in range(n)) for d, n in enumerate(counts)
    )
    report = scan_bytes(text.encode())
    assert report.stats.documents == 10
    assert report.stats.sentences == 47
    assert report.stats.sentences_per_document == {
        "min": 1,
        "max": 17,
        "mean": 4.7,
        "median": 2.5,  # sorted: 1 2 2 2 2 | 3 4 5 9 17
        "p90": 9,  # nearest rank: the 9th of 10
        "histogram": {"1": 1, "2": 4, "3-4": 2, "5-8": 1, "9-16": 1, "17+": 1},
    }


def test_distribution_with_an_odd_number_of_documents() -> None:
    report = scan_bytes(b"a.\nb.\nc.\n\nd.\ne.\n\nf.\ng.\nh.\ni.\n")
    spd = report.stats.sentences_per_document
    assert (spd["min"], spd["max"], spd["median"], spd["p90"]) == (2, 4, 3.0, 4)
    assert spd["mean"] == 3.0


# -- gzip ---------------------------------------------------------------------------------------------


def test_gzip_gives_the_same_stats_except_raw_size_and_hash(tmp_path: Path) -> None:
    plain = tmp_path / "corpus.txt"
    plain.write_bytes(DATA)
    packed = tmp_path / "corpus.txt.gz"
    packed.write_bytes(gzip.compress(DATA))
    a, b = scan_corpus(plain), scan_corpus(packed)
    assert b.stats.bytes == packed.stat().st_size != a.stats.bytes
    assert b.stats.sha256 == hashlib.sha256(packed.read_bytes()).hexdigest()
    assert (b.stats.documents, b.stats.sentences, b.stats.characters) == (3, 7, CHARACTERS)
    assert b.stats.sentences_per_document == a.stats.sentences_per_document
    assert b.warnings == a.warnings


def test_gzip_is_detected_by_magic_not_by_name(tmp_path: Path) -> None:
    disguised = tmp_path / "corpus.txt"
    disguised.write_bytes(gzip.compress(DATA))
    assert scan_corpus(disguised).stats.characters == CHARACTERS
    plain_named_gz = tmp_path / "plain.txt.gz"
    plain_named_gz.write_bytes(DATA)
    assert scan_corpus(plain_named_gz).stats.characters == CHARACTERS


def test_gzip_fed_one_byte_at_a_time() -> None:
    packed = gzip.compress(DATA)
    assert documents_of(packed, chunk_size=1) == documents_of(DATA)
    assert scan_bytes(packed, chunk_size=1).to_dict() == scan_bytes(packed).to_dict()


def test_multi_member_gzip_with_zero_padding() -> None:
    middle = DATA.index(b"\n\n") + 2
    packed = gzip.compress(DATA[:middle]) + gzip.compress(DATA[middle:]) + b"\x00" * 8
    assert documents_of(packed) == documents_of(DATA)
    assert documents_of(packed, chunk_size=7) == documents_of(DATA)


def test_truncated_gzip() -> None:
    packed = gzip.compress(DATA)
    for cut in (2, 10, len(packed) // 2, len(packed) - 1):
        err = error_of(packed[:cut])
        assert err.code == "invalid_gzip"
        assert "truncated" in str(err)


def test_corrupt_gzip() -> None:
    packed = bytearray(gzip.compress(DATA * 4))
    packed[3] = 0xE0  # reserved header flag bits must be zero
    assert error_of(bytes(packed)).code == "invalid_gzip"
    garbage_after_member = gzip.compress(DATA) + b"not gzip at all"
    err = error_of(garbage_after_member)
    assert err.code == "invalid_gzip"
    assert "corrupt" in str(err)


def test_gzip_bomb_is_stopped_by_the_line_guard_while_feeding() -> None:
    packed = gzip.compress(b"x" * (20 << 20))  # 20 MB on one line, about 20 kB compressed
    scanner = CorpusScanner()
    with pytest.raises(CorpusFormatError) as info:
        scanner.feed(packed)
    assert (info.value.code, info.value.line, info.value.byte_offset) == ("line_too_long", 1, 0)


def test_the_limits_refuse_a_gzip_bomb_while_it_inflates() -> None:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    bomb = packer.compress(b"\n" * (16 << 20)) + packer.flush()  # 16 MiB of newlines in ~70 kB
    scanner = CorpusScanner(path="bomb.txt.gz", limits=InflateLimits(max_bytes=1 << 40, max_ratio=100))
    with pytest.raises(InflateLimitExceeded) as info:
        scanner.feed(bomb)  # one chunk: refused inside it, after one piece of output
    assert info.value.cap == "ratio" and info.value.decompressed < 16 << 20
    with pytest.raises(InflateLimitExceeded):
        scanner.feed(b"more")  # kept, like a format error
    # The size cap counts the text, whether it came compressed or not.
    for data in (DATA * 10, gzip.compress(DATA * 10)):
        with pytest.raises(InflateLimitExceeded) as info:
            scan_bytes(data, 100, limits=InflateLimits(max_bytes=5 * len(DATA), max_ratio=100))
        assert (info.value.cap, info.value.limit) == ("size", 5 * len(DATA))
    assert scan_bytes(
        gzip.compress(DATA * 10), limits=InflateLimits(max_bytes=10 * len(DATA))
    ).stats.documents


# -- decoding: BOM, line endings, chunking -------------------------------------------------------------


def test_bom_is_stripped_and_counted_in_offsets() -> None:
    report = scan_bytes(b"\xef\xbb\xbf" + DATA)
    assert report.stats.characters == CHARACTERS
    assert documents_of(b"\xef\xbb\xbf" + DATA)[0][0][0] == DOCUMENTS[0][0]
    err = error_of(b"\xef\xbb\xbfGood line.\nBad \xff line.\n")
    assert (err.line, err.byte_offset) == (2, 3 + 11 + 4)


def test_crlf_and_lone_cr_are_line_breaks() -> None:
    expected = documents_of(DATA)
    assert documents_of(DATA.replace(b"\n", b"\r\n")) == expected
    assert documents_of(DATA.replace(b"\n", b"\r")) == expected
    assert documents_of(DATA.replace(b"\n", b"\r\n"), chunk_size=1) == expected
    assert documents_of(DATA.replace(b"\n", b"\r"), chunk_size=1) == expected
    assert scan_bytes(DATA.replace(b"\n", b"\r\n")).stats.characters == CHARACTERS


def test_crlf_split_across_two_chunks_is_one_line_break() -> None:
    seen: list[tuple[list[str], int]] = []
    scanner = CorpusScanner(on_document=lambda sentences, line: seen.append((sentences, line)))
    scanner.feed(b"First sentence.\r")
    scanner.feed(b"\nSecond sentence.\r\n\r")
    scanner.feed(b"\nThird sentence.\r")
    scanner.feed(b"\n")
    scanner.feed(b"Fourth sentence.\r\n")
    report = scanner.finish()
    assert seen == [
        (["First sentence.", "Second sentence."], 1),
        (["Third sentence.", "Fourth sentence."], 4),
    ]
    assert report.stats.sentences == 4


def test_error_offsets_count_the_original_crlf_bytes() -> None:
    err = error_of(b"One.\r\nTwo.\r\n\r\nThree \xfe.\r\n")
    assert (err.code, err.line, err.byte_offset) == ("invalid_utf8", 4, 6 + 6 + 2 + 6)
    err = error_of(b"One.\rTwo.\r\rThree \x00.\r", chunk_size=1)
    assert (err.code, err.line, err.byte_offset) == ("nul_byte", 4, 5 + 5 + 1)


MIXED = (
    "\ufeffÜber den Fluss führt eine alte Brücke.\r\n"
    "Sie wurde aus rotem Sandstein gebaut.\r\n"
    "\r\n"
    "   \t \n"
    "日本語の文も一行に一つずつ書きます。\r"
    "Emoji like 🚲 take four bytes.\n"
    "\n\n\n"
    "Last document, single sentence.\n"
).encode()


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 64])
def test_any_chunking_gives_the_same_report(chunk_size: int) -> None:
    assert scan_bytes(MIXED, chunk_size).to_dict() == scan_bytes(MIXED).to_dict()
    assert documents_of(MIXED, chunk_size) == documents_of(MIXED)


def test_mixed_corpus_documents_and_lines() -> None:
    assert documents_of(MIXED) == [
        (["Über den Fluss führt eine alte Brücke.", "Sie wurde aus rotem Sandstein gebaut."], 1),
        (["日本語の文も一行に一つずつ書きます。", "Emoji like 🚲 take four bytes."], 5),
        (["Last document, single sentence."], 10),
    ]
    report = scan_bytes(MIXED)
    assert report.stats.characters == 38 + 37 + 18 + 29 + 31


def test_multibyte_character_split_across_chunks() -> None:
    data = two_docs("Ein Bär.", "Zwei Bären.")
    split = data.index("ä".encode()) + 1
    scanner = CorpusScanner()
    scanner.feed(data[:split])
    scanner.feed(data[split:])
    assert scanner.finish().to_dict() == scan_bytes(data).to_dict()


# -- blank lines and documents -------------------------------------------------------------------------


def test_whitespace_only_lines_are_blank() -> None:
    data = b"One.\nTwo.\n \t \nThree.\nFour.\n\xc2\xa0\n"  # the last line is a no-break space
    assert documents_of(data) == [(["One.", "Two."], 1), (["Three.", "Four."], 4)]


def test_several_blank_lines_are_one_separator_and_outer_blank_lines_are_fine() -> None:
    data = b"\n\n  \nOne.\nTwo.\n\n\n\n\nThree.\nFour.\n\n\n"
    assert documents_of(data) == [(["One.", "Two."], 4), (["Three.", "Four."], 10)]
    assert scan_bytes(data).stats.documents == 2


@pytest.mark.parametrize("chunk_size", [None, 4096, 1 << 20])
def test_long_runs_of_blank_lines_are_skipped_in_one_step(
    chunk_size: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Millions of blank lines cost what their bytes cost, not one turn of the line loop each (a gigabyte
    of newlines took minutes); documents, line numbers and errors are those of reading line by line."""
    looped = 0
    consume = CorpusScanner._consume

    def counting(self: CorpusScanner, lines: list[str], *, normalize: bool) -> None:
        nonlocal looped
        looped += len(lines)
        consume(self, lines, normalize=normalize)

    monkeypatch.setattr(CorpusScanner, "_consume", counting)
    blank = "\n" * 2_000_000 + " \t\n" * 1000 + "\u3000\n" * 500  # 2,001,500 blank lines
    text = "First doc.\nSecond line.\n" + blank + "Second doc.\n" + blank + "\n" + "Third.\r\n"
    seen = []
    scanner = CorpusScanner(on_document=lambda sentences, line: seen.append((sentences, line)))
    data = text.encode()
    for start in range(0, len(data), chunk_size or len(data)):
        scanner.feed(data[start : start + (chunk_size or len(data))])
    report = scanner.finish()
    assert seen == [
        (["First doc.", "Second line."], 1),
        (["Second doc."], 2_001_503),
        (["Third."], 4_003_005),
    ]
    assert report.stats.documents == 3
    assert looped < 10_000
    # A whitespace line over the limit inside a run is still found, at its line and byte.
    data = b"Doc one.\n" + b"\n" * 100 + b" " * 50 + b"\n" + b"\n" * 100 + b"Two.\n"
    err = error_of(data, chunk_size, max_line_chars=20)
    assert (err.code, err.line, err.byte_offset) == ("line_too_long", 102, 109)


def test_sentences_are_stripped() -> None:
    assert documents_of(b"  One. \n\tTwo.\t\n\nThree.\nFour.")[0] == (["One.", "Two."], 1)


def test_last_line_without_newline() -> None:
    assert documents_of(b"One.\nTwo.\n\nThree.\nFour.") == [(["One.", "Two."], 1), (["Three.", "Four."], 4)]


# -- errors --------------------------------------------------------------------------------------------


def test_invalid_utf8_reports_line_and_offset_of_the_bad_byte() -> None:
    data = b"first line.\nsecond line.\n\nthird \xff line.\n"
    for chunk_size in (None, 1, 4):
        err = error_of(data, chunk_size)
        assert (err.code, err.line, err.byte_offset) == ("invalid_utf8", 4, 12 + 13 + 1 + 6)
        assert "0xff" in str(err)


def test_invalid_utf8_latin1_and_truncated_character_at_the_end() -> None:
    err = error_of("Ein Bär.\nZwei.\n\nDrei.\nVier.\n".encode("latin-1"))
    assert (err.line, err.byte_offset) == (1, 5)
    assert "0xe4" in str(err)
    err = error_of(b"One.\nTwo.\n\nThree.\nFour \xe2\x82")
    assert (err.code, err.line, err.byte_offset) == ("invalid_utf8", 5, 5 + 5 + 1 + 7 + 5)


def test_nul_byte_reports_the_line() -> None:
    data = b"One.\nTwo.\n\nThr\x00ee.\nFour.\n"
    for chunk_size in (None, 1, 3):
        err = error_of(data, chunk_size)
        assert (err.code, err.line, err.byte_offset) == ("nul_byte", 4, 11)
        assert "binary" in str(err)


def test_utf16_text_is_rejected() -> None:
    err = error_of(TEXT.encode("utf-16"))
    assert err.code in {"nul_byte", "invalid_utf8"}
    assert err.line == 1


def test_the_first_problem_in_the_file_is_reported_whatever_the_chunking() -> None:
    data = b"One.\nTwo.\n\nThis line is too long.\nBad \xff.\nNUL \x00.\n"
    for chunk_size in (None, 1, 7):
        err = error_of(data, chunk_size, max_line_chars=10)
        assert (err.code, err.line, err.byte_offset) == ("line_too_long", 4, 11)


def test_line_too_long_with_a_small_limit() -> None:
    ok = ("0123456789\n" + "é" * 10 + "\n\nShort one.\nShort two.\n").encode()  # "é" * 10 is 20 bytes
    assert scan_bytes(ok, max_line_chars=10).stats.characters == 40
    err = error_of(b"Short.\n\n0123456789A\nNext.\n", max_line_chars=10)
    assert (err.code, err.line, err.byte_offset) == ("line_too_long", 3, 8)
    assert "11 characters" in str(err)


def test_line_too_long_with_the_default_limit() -> None:
    assert scan_bytes(two_docs("x" * 100_000, "y.")).stats.characters == 100_002 + 18 + 23
    err = error_of(two_docs("Fine.", "x" * 100_001))
    assert (err.code, err.line, err.byte_offset) == ("line_too_long", 2, 6)


def test_unterminated_long_line_is_rejected_without_buffering_it() -> None:
    scanner = CorpusScanner(max_line_chars=10)
    scanner.feed(b"Fine.\n")
    for _ in range(44 - 1):
        scanner.feed(b"x")  # 4 * 10 + 4 bytes could still be ten 4-byte characters
    scanner.feed(b"x")
    with pytest.raises(CorpusFormatError) as info:
        scanner.feed(b"x")
    assert (info.value.code, info.value.line, info.value.byte_offset) == ("line_too_long", 2, 6)
    with pytest.raises(CorpusFormatError):  # the scanner stays failed
        scanner.feed(b"\n")


@pytest.mark.parametrize("data", [b"", b"\n", b"  \n\t\n\r\n \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"])
def test_empty_corpus(data: bytes) -> None:
    assert error_of(data).code == "empty_corpus"
    assert error_of(gzip.compress(data)).code == "empty_corpus"


def test_a_single_document_is_read_with_a_warning() -> None:
    # A book or a manual trains MLM-only; next-sentence prediction is refused later, by the preparation.
    report = scan_bytes(b"\nOnly one document.\nIt has two sentences.\n\n")
    assert report.stats.documents == 1
    warning = warnings_by_code(report)["single_document"]
    assert (warning.count, warning.first_line) == (1, 2)
    assert "nsp: false" in warning.message


def test_a_corpus_without_visible_text_is_refused() -> None:
    err = error_of(b"\x01\x02\n\x03\n\n\x7f\n")
    assert err.code == "no_text"


def test_error_message_has_path_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"One.\nTwo.\n\nThree \xff.\n")
    with pytest.raises(CorpusFormatError) as info:
        scan_corpus(path)
    err = info.value
    assert err.path == str(path)
    assert str(err).startswith(f"{path}, line 4 (byte 17): invalid UTF-8 (byte 0xff")
    assert "re-encode" in str(err)
    assert err.to_dict()["line"] == 4
    assert isinstance(err, ValueError)


def test_error_survives_pickling() -> None:
    err = CorpusFormatError("boom", code="nul_byte", line=3, byte_offset=7, path="c.txt")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.line, copy.byte_offset, copy.path, str(copy)) == (
        "nul_byte",
        3,
        7,
        "c.txt",
        "c.txt, line 3 (byte 7): boom",
    )


def test_error_without_location_is_just_the_message() -> None:
    err = error_of(b"")
    assert (err.line, err.byte_offset, err.path) == (None, None, None)
    assert str(err) == err.message


def test_feed_after_finish_is_a_bug() -> None:
    scanner = CorpusScanner()
    scanner.feed(DATA)
    report = scanner.finish()
    assert scanner.finish() is report
    with pytest.raises(RuntimeError):
        scanner.feed(b"more")


# -- warnings ------------------------------------------------------------------------------------------


def warnings_by_code(report: CorpusReport) -> dict[str, RunWarning]:
    return {w.code: w for w in report.warnings}


def test_one_sentence_and_duplicate_documents() -> None:
    data = (
        b"Alpha one.\nAlpha two.\n\n"  # line 1
        b"Lonely sentence.\n\n"  # line 4
        b"Alpha one.\nAlpha two.\n\n"  # line 6, duplicate
        b"Beta one.\nBeta two.\n\n"  # line 9
        b"Lonely sentence.\n\n"  # line 12, duplicate and single
        b"  Alpha one.  \nAlpha two.\n"  # line 14, duplicate after stripping
    )
    warnings = warnings_by_code(scan_bytes(data))
    assert set(warnings) == {"one_sentence_documents", "duplicate_documents"}
    assert (warnings["one_sentence_documents"].count, warnings["one_sentence_documents"].first_line) == (2, 4)
    assert (warnings["duplicate_documents"].count, warnings["duplicate_documents"].first_line) == (3, 6)
    assert warnings["duplicate_documents"].model_dump(exclude_none=True) == {
        "code": "duplicate_documents",
        "count": 3,
        "message": warnings["duplicate_documents"].message,
        "first_line": 6,
    }


def test_documents_differing_only_in_line_breaks_are_not_duplicates() -> None:
    report = scan_bytes(b"One two.\nThree.\n\nOne two. Three.\n\nOne\ntwo. Three.\n")
    assert "duplicate_documents" not in warnings_by_code(report)


def test_blank_line_after_every_sentence() -> None:
    data = b"".join(f"Sentence number {i}.\n\n".encode() for i in range(6))
    warnings = warnings_by_code(scan_bytes(data))
    assert set(warnings) == {"blank_line_after_every_sentence", "one_sentence_documents"}
    blank = warnings["blank_line_after_every_sentence"]
    assert (blank.count, blank.first_line) == (6, 1)
    assert "consecutive lines" in blank.message
    assert warnings["one_sentence_documents"].count == 6


def test_blank_line_warning_thresholds() -> None:
    # Exactly 80% single-sentence documents is not more than 80%.
    four_of_five = b"A.\n\nB.\n\nC.\n\nD.\n\nE one.\nE two.\n"
    assert set(warnings_by_code(scan_bytes(four_of_five))) == {"one_sentence_documents"}
    # Five of six is, with enough documents.
    five_of_six = b"A.\n\nB.\n\nC.\n\nD.\n\nF.\n\nE one.\nE two.\n"
    assert warnings_by_code(scan_bytes(five_of_six))["blank_line_after_every_sentence"].count == 5
    # Four documents are too few to judge.
    four = b"A.\n\nB.\n\nC.\n\nD.\n"
    assert set(warnings_by_code(scan_bytes(four))) == {"one_sentence_documents"}


# -- text that is not what it seems (issue 9) ------------------------------------------------------------


def test_lines_are_normalized_to_nfc_and_counted() -> None:
    nfc = "Le café de l'été.\nUne élève arrive.\n\nSans accent.\nRien ici.\n"
    nfd = unicodedata.normalize("NFD", nfc).encode()
    assert nfd != nfc.encode()
    report = scan_bytes(nfd)
    assert documents_of(nfd) == documents_of(nfc.encode())
    assert report.stats.nfc_normalized_lines == 2
    assert report.stats.sha256 == hashlib.sha256(nfd).hexdigest()  # the bytes as given
    warning = warnings_by_code(report)["unnormalized_text"]
    assert (warning.count, warning.first_line) == (2, 1)
    for chunk_size in (1, 3, 7):
        assert scan_bytes(nfd, chunk_size).to_dict() == report.to_dict()
    assert "unnormalized_text" not in warnings_by_code(scan_bytes(nfc.encode()))


def test_lines_of_only_format_characters_are_blank() -> None:
    # Two files concatenated without a blank line, the second starting with its byte-order mark; a
    # zero-width space and a word joiner alone on a line.
    data = "One.\nTwo.\n\ufeff\nThree.\nFour.\n \u200b\u2060 \nFive.\nSix.\n".encode()
    assert documents_of(data) == [(["One.", "Two."], 1), (["Three.", "Four."], 4), (["Five.", "Six."], 7)]
    report = scan_bytes(data)
    assert report.stats.invisible_lines == 2
    warning = warnings_by_code(report)["invisible_lines"]
    assert (warning.count, warning.first_line) == (2, 3)
    assert scan_bytes(data, chunk_size=1).to_dict() == report.to_dict()


def test_documents_without_visible_text_are_counted_and_named() -> None:
    data = two_docs("Fine text.", "More.") + b"\n\x01\x02\n\x1b[0m\n\nGood.\nAgain.\n\n\x07\n"
    report = scan_bytes(data)
    assert [sentences for sentences, _ in documents_of(data)][2] == ["\x01\x02", "\x1b[0m"]
    warning = warnings_by_code(report)["documents_without_text"]
    assert (warning.count, warning.first_line) == (1, 13)  # "\x1b[0m" has visible text: "[0m"
    data = two_docs("Fine.", "More.") + b"\n\x01\x02\n\x7f\n\nGood.\nAgain.\n\n\x07\n"
    warning = warnings_by_code(scan_bytes(data))["documents_without_text"]
    assert (warning.count, warning.first_line) == (2, 7)
    assert "line(s) 7, 13" in warning.message


def test_characters_of_scripts_without_spaces_are_counted() -> None:
    data = "日本語の文です。\nภาษาไทย\n\nEnglish words only.\n中文。\n".encode()
    assert scan_bytes(data).stats.unspaced_script_characters == 7 + 7 + 2
    assert scan_bytes(data, chunk_size=2).stats.unspaced_script_characters == 16


# -- consumers -----------------------------------------------------------------------------------------


def test_on_document_receives_sentences_and_first_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"\n" + DATA)
    seen: list[tuple[list[str], int]] = []
    scan_corpus(path, on_document=lambda sentences, line: seen.append((sentences, line)), chunk_size=16)
    assert seen == [(DOCUMENTS[0], 2), (DOCUMENTS[1], 5), (DOCUMENTS[2], 9)]


def test_reader_and_iter_documents_yield_the_same_documents(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress(MIXED))
    expected = [sentences for sentences, _ in documents_of(MIXED)]
    assert list(iter_documents(path)) == expected
    reader = CorpusReader(path, chunk_size=5)
    with pytest.raises(RuntimeError):
        _ = reader.report
    assert list(reader) == expected
    assert reader.report.to_dict() == scan_corpus(path).to_dict()


def test_iter_documents_is_lazy_and_raises_at_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(DATA + b"\nBroken \xff sentence.\n")
    documents = iter_documents(path)
    collected = []
    with pytest.raises(CorpusFormatError) as info:
        for doc in documents:
            collected.append(doc)
    assert collected == DOCUMENTS
    assert info.value.line == 11


def test_reader_yields_the_last_document_before_rejecting_the_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"\x01\x02\n\x03 \x04\n")
    reader = CorpusReader(path)
    collected = []
    with pytest.raises(CorpusFormatError) as info:
        for doc in reader:
            collected.append(doc)
    assert collected == [["\x01\x02", "\x03 \x04"]]
    assert info.value.code == "no_text"


def test_module_imports_no_heavy_dependencies() -> None:
    code = (
        "import sys, worker.pretraining.corpus; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
