"""Reading and validating labelled datasets for downstream evaluation (text classification, single texts or
pairs), and a seeded stratified split.

Formats, chosen by the file name's extension (of ``name`` when given, else of ``path``):

- ``.tsv``: tab-separated values as IANA ``text/tab-separated-values`` defines them: no quoting, so a field
  holds no tab and no line break, and a quote character is just a character (GLUE's TSV files quote
  nothing and contain stray ``"``);
- ``.csv``: comma-separated values with RFC 4180 quoting (Python's ``csv`` "excel" dialect): a field in
  double quotes may hold commas, line breaks and doubled ``""``;
- ``.jsonl``: one JSON object per line.

UTF-8, with or without a byte-order mark; ``\\n``, ``\\r\\n`` or ``\\r`` line ends. TSV and CSV need a
header row. Columns (JSON keys): ``text`` and ``label``, and optionally ``text_pair`` (the second segment of
a pair task, such as the hypothesis of an entailment task). Other columns are ignored (an ``id`` or ``idx``
column is common), except that a column whose name is a near miss of a missing known one (``Text``,
``labels``, ``text_pairs``) is refused, so a typo never silently drops the labels or the second segment.
In JSON Lines the first object plays the header's part: whether ``text_pair`` is there is decided by it, and
every later object must agree. Blank lines are skipped.

Values: ``text`` and ``text_pair`` are strings, stripped of surrounding whitespace and normalized to Unicode
NFC, never empty; when the dataset has ``text_pair``, every example has one. Labels are class *names* and
are kept as strings, stripped and NFC-normalized: ``"pos"`` stays ``"pos"``; a JSON integer ``1`` becomes
``"1"`` and a JSON boolean becomes ``"true"``/``"false"`` (its JSON spelling), so ``1`` and ``"1"`` are one
class. Fractional numbers, ``null``, arrays and objects are refused as labels (regression is not supported).

Every error is a :class:`DatasetFormatError` naming the file, the 1-based line (of the record's first line
for a quoted CSV field spanning lines) and the field. Pure standard library: the API validates uploads with
this module and must not import numpy or torch.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import math
import random
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_FIELD_CHARS",
    "MIN_EXAMPLES_PER_LABEL",
    "MIN_LABELS",
    "DatasetFormat",
    "DatasetFormatError",
    "LabelledDataset",
    "LabelledExample",
    "dataset_format",
    "read_labelled_dataset",
    "stratified_split",
]

DatasetFormat = Literal["tsv", "csv", "jsonl"]
FORMATS: tuple[DatasetFormat, ...] = get_args(DatasetFormat)

# A classification task needs two classes at least.
MIN_LABELS = 2
# Every class needs one example in the held-out test split, one in the validation split that early stopping
# watches, and at least two left to learn from: 4. (More is better, but a small task is a legitimate use.)
MIN_EXAMPLES_PER_LABEL = 4
# The same limit as a pre-training corpus line: far beyond any sequence length BERT can use (512 tokens),
# and it bounds the memory one malformed record can take. The csv module's own field limit (131,072
# characters by default) is above it.
MAX_FIELD_CHARS = 100_000
# Labelled sets for fine-tuning are small (SST-2's training file is 5 MB); the whole file is read into memory.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024

TEXT, TEXT_PAIR, LABEL = "text", "text_pair", "label"
_KNOWN_COLUMNS = (TEXT, TEXT_PAIR, LABEL)
# difflib's ratio between the lowercase names: "labels"/"label" 0.91, "text_pairs"/"text_pair" 0.95,
# "Text"/"text" 1.0, "sentence"/"text" 0.33, "idx"/"text" 0.29.
_NEAR_MISS_RATIO = 0.8


class DatasetFormatError(ValueError):
    """The labelled dataset cannot be used as it is; ``str()`` reads ``FILE line N: field 'F' ...``.

    ``file`` is the name given to the reader (the uploaded file name) or the path's name; ``line`` is
    1-based, ``None`` for a problem of the whole file (its size, its labels); ``field`` is the column or
    JSON key to blame, or ``None``. ``message`` is the text without the location.
    """

    def __init__(
        self, message: str, file: str = "", line: int | None = None, field: str | None = None
    ) -> None:
        # Positional defaults so that the error survives pickling (Celery rebuilds it from ``args``).
        super().__init__(message, file, line, field)
        self.message = message
        self.file = file
        self.line = line
        self.field = field

    def location(self) -> str:
        """``FILE line N`` with the parts that are known."""
        return " ".join(part for part in (self.file, f"line {self.line}" if self.line else "") if part)

    def __str__(self) -> str:
        where = self.location()
        what = f"field {self.field!r} {self.message}" if self.field else self.message
        return f"{where}: {what}" if where else what


@dataclass(frozen=True)
class LabelledExample:
    """One example: ``text`` (and ``text_pair`` for a pair task), stripped and NFC-normalized, and its class
    name ``label``."""

    text: str
    label: str
    text_pair: str | None = None


@dataclass(frozen=True)
class LabelledDataset:
    """A validated dataset. ``labels``: the distinct class names, sorted (as strings); ``has_text_pair``:
    every example has a ``text_pair``; ``ignored_columns``: the columns (keys of the first JSON object)
    that were not read."""

    examples: tuple[LabelledExample, ...]
    labels: tuple[str, ...]
    has_text_pair: bool
    format: DatasetFormat
    ignored_columns: tuple[str, ...] = ()

    def label_counts(self) -> dict[str, int]:
        """Examples per label, in the order of ``labels``."""
        counts = Counter(example.label for example in self.examples)
        return {label: counts[label] for label in self.labels}


def dataset_format(file_name: str) -> DatasetFormat:
    """The format named by the file name's extension (case-insensitive).

    Raises :class:`DatasetFormatError` for any other extension.
    """
    suffix = Path(file_name).suffix.lower().lstrip(".")
    for fmt in FORMATS:
        if suffix == fmt:
            return fmt
    raise DatasetFormatError(
        f"the extension {Path(file_name).suffix or '(none)'!r} is not one of a labelled dataset's: "
        ".tsv, .csv or .jsonl",
        file_name,
    )


def read_labelled_dataset(
    path: Path,
    *,
    name: str | None = None,
    known_labels: Collection[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> LabelledDataset:
    """Read and validate the labelled dataset at ``path``.

    ``name``: the file name to report in errors and to take the format from (an upload stored under another
    name); default ``path.name``. ``known_labels``: when reading a separate *test* file, the labels of its
    training file: every test label must be one of them (a class never trained on cannot be predicted),
    and the minimums below do not apply (a test set may be small or lack a class). ``max_bytes``: the size
    cap of the file (``None``: no cap).

    Validation: the columns (see the module docstring); non-empty ``text``, ``label`` and (when the dataset
    has it) ``text_pair`` of at most :data:`MAX_FIELD_CHARS` characters; at least :data:`MIN_LABELS` distinct
    labels and :data:`MIN_EXAMPLES_PER_LABEL` examples of each. Raises :class:`DatasetFormatError`.
    """
    file = name or path.name
    fmt = dataset_format(file)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DatasetFormatError(f"the file is {size:,} bytes; the limit is {max_bytes:,} bytes", file)
    text = _decode(path.read_bytes(), file)
    rows = _jsonl_rows(text, file) if fmt == "jsonl" else _table_rows(text, file, fmt)
    examples: list[LabelledExample] = []
    has_text_pair = False
    ignored: tuple[str, ...] = ()
    first_label_line: dict[str, int] = {}
    for index, (line, record, columns, columns_line) in enumerate(rows):
        if index == 0:
            has_text_pair, ignored = _check_columns(columns, file, columns_line)
        example = _example(record, file, line, has_text_pair)
        if known_labels is not None and example.label not in known_labels:
            raise DatasetFormatError(
                f"is {example.label!r}, a label that the training file does not have "
                f"({_list_labels(known_labels)}); a model cannot predict a class it was never trained on",
                file,
                line,
                LABEL,
            )
        first_label_line.setdefault(example.label, line)
        examples.append(example)
    if not examples:
        raise DatasetFormatError("the file has no examples, only a header or blank lines", file)
    counts = Counter(example.label for example in examples)
    if known_labels is None:
        _check_label_counts(counts, file)
    return LabelledDataset(
        examples=tuple(examples),
        labels=tuple(sorted(counts)),
        has_text_pair=has_text_pair,
        format=fmt,
        ignored_columns=ignored,
    )


def stratified_split(
    examples: Sequence[LabelledExample], fraction: float, seed: int
) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """Split ``examples`` into ``(rest, held_out)`` with about ``fraction`` of each label held out.

    Per label of ``n`` examples, ``floor(fraction * n + 0.5)`` are held out, clamped to ``[1, n - 1]`` when
    ``n >= 2`` so that the label is in both parts (a label of one example stays in ``rest``); which ones is
    drawn with ``random.Random(seed)``, labels taken in sorted order, so the split depends on the seed and
    the examples only. Both parts keep the input order. Stratification as in scikit-learn's
    ``train_test_split(stratify=...)``; the per-label rounding may hold out a little more than ``fraction``
    overall when many labels are small.

    Raises ``ValueError`` unless ``0 < fraction < 1``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_label[example.label].append(index)
    rng = random.Random(seed)
    held_out: set[int] = set()
    for label in sorted(by_label):
        indices = by_label[label]
        n = len(indices)
        if n < 2:
            continue
        count = min(max(math.floor(fraction * n + 0.5), 1), n - 1)
        held_out.update(rng.sample(indices, count))
    rest = [example for index, example in enumerate(examples) if index not in held_out]
    return rest, [example for index, example in enumerate(examples) if index in held_out]


# --- reading ---------------------------------------------------------------------------------------------

# (line, record, columns, columns_line): the record's first line, its values by column, the columns of this
# record and where they are named (the header for TSV/CSV, the record's keys for JSON Lines).
_Row = tuple[int, dict[str, Any], Sequence[str], int]


def _decode(data: bytes, file: str) -> str:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetFormatError(
            f"the file is not UTF-8 (byte {exc.start}); save it as UTF-8", file, line
        ) from None


def _table_rows(text: str, file: str, fmt: DatasetFormat) -> Iterator[_Row]:
    stream = io.StringIO(text, newline="")
    if fmt == "tsv":
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(stream, dialect="excel", strict=True)
    header: list[str] | None = None
    header_line = line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DatasetFormatError(f"the record is not valid {fmt.upper()}: {exc}", file, line) from None
        start, line = line, reader.line_num + 1
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        if header is None:
            header = [column.strip() for column in fields]
            header_line = start
            _check_header(header, file, start)
            continue
        if len(fields) != len(header):
            hint = " (a tab inside a TSV field? use CSV with quotes)" if fmt == "tsv" else ""
            raise DatasetFormatError(
                f"the row has {len(fields)} fields, the header has {len(header)}{hint}", file, start
            )
        yield start, dict(zip(header, fields, strict=True)), header, header_line
    if header is None:
        raise DatasetFormatError(
            f"the file is empty; a {fmt.upper()} dataset starts with a header row naming its columns "
            f"({TEXT}, {LABEL}, optionally {TEXT_PAIR})",
            file,
        )


def _check_header(header: list[str], file: str, line: int) -> None:
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise DatasetFormatError(f"column {column!r} appears twice in the header", file, line)
        seen.add(column)


def _jsonl_rows(text: str, file: str) -> Iterator[_Row]:
    # str.splitlines() would also split at \x1c-\x1e, \x85 and \u2028, which JSON strings may hold raw.
    for line, raw in enumerate(io.StringIO(text, newline=None), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(
                f"the line is not valid JSON: {exc.msg} (column {exc.colno})", file, line
            ) from None
        if not isinstance(record, dict):
            raise DatasetFormatError(
                f'the line holds {_json_type(record)}, not an object like {{"text": "...", "label": "..."}}',
                file,
                line,
            )
        yield line, record, list(record), line


def _check_columns(columns: Sequence[str], file: str, line: int) -> tuple[bool, tuple[str, ...]]:
    """Whether there is a ``text_pair``, and the ignored columns; refuses a missing or misspelt column."""
    present = set(columns)
    unknown = [column for column in columns if column not in _KNOWN_COLUMNS]
    for known in _KNOWN_COLUMNS:
        if known in present:
            continue
        near = [column for column in unknown if _near_miss(column, known)]
        if near:
            raise DatasetFormatError(
                f"is missing, but there is a column {near[0]!r}: rename it to {known!r} (the column names "
                f"are {TEXT}, {LABEL} and optionally {TEXT_PAIR}, lowercase)",
                file,
                line,
                known,
            )
        if known != TEXT_PAIR:
            raise DatasetFormatError(
                f"is missing (the columns are {', '.join(map(repr, columns))}; a labelled dataset needs "
                f"{TEXT} and {LABEL}, and optionally {TEXT_PAIR})",
                file,
                line,
                known,
            )
    return TEXT_PAIR in present, tuple(unknown)


def _near_miss(column: str, known: str) -> bool:
    return difflib.SequenceMatcher(None, column.strip().lower(), known).ratio() >= _NEAR_MISS_RATIO


def _example(record: dict[str, Any], file: str, line: int, has_text_pair: bool) -> LabelledExample:
    text = _text_value(record, TEXT, file, line)
    text_pair: str | None = None
    if has_text_pair:
        text_pair = _text_value(record, TEXT_PAIR, file, line)
    elif record.get(TEXT_PAIR) is not None:
        raise DatasetFormatError(
            "is set here but not in the first record; either every example has a text_pair or none",
            file,
            line,
            TEXT_PAIR,
        )
    return LabelledExample(text=text, label=_label_value(record, file, line), text_pair=text_pair)


def _text_value(record: dict[str, Any], field: str, file: str, line: int) -> str:
    if field not in record:
        raise DatasetFormatError("is missing", file, line, field)
    value = record[field]
    if not isinstance(value, str):
        raise DatasetFormatError(f"must be a string, not {_json_type(value)}", file, line, field)
    return _clean(value, file, line, field)


def _label_value(record: dict[str, Any], file: str, line: int) -> str:
    if LABEL not in record:
        raise DatasetFormatError("is missing", file, line, LABEL)
    value = record[LABEL]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise DatasetFormatError(
            f"must be a class name (a string or an integer), not {json.dumps(value)[:40]}; regression "
            "targets are not supported",
            file,
            line,
            LABEL,
        )
    return _clean(value, file, line, LABEL)


def _clean(value: str, file: str, line: int, field: str) -> str:
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise DatasetFormatError("is empty", file, line, field)
    if len(value) > MAX_FIELD_CHARS:
        raise DatasetFormatError(
            f"has {len(value):,} characters; the limit is {MAX_FIELD_CHARS:,}", file, line, field
        )
    return value


def _json_type(value: Any) -> str:
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


def _check_label_counts(counts: Counter[str], file: str) -> None:
    if len(counts) < MIN_LABELS:
        raise DatasetFormatError(
            f"has {len(counts)} distinct label ({_list_labels(counts)}); a classification task needs "
            f"at least {MIN_LABELS}",
            file,
            field=LABEL,
        )
    rare = sorted(label for label, count in counts.items() if count < MIN_EXAMPLES_PER_LABEL)
    if rare:
        shown = ", ".join(f"{label!r} ({counts[label]})" for label in rare[:10])
        more = f" and {len(rare) - 10} more" if len(rare) > 10 else ""
        raise DatasetFormatError(
            f"has too few examples of {shown}{more}: every label needs at least {MIN_EXAMPLES_PER_LABEL} "
            "(one to test on, one to validate on, two to learn from); add examples or drop the label",
            file,
            field=LABEL,
        )


def _list_labels(labels: Collection[str]) -> str:
    ordered = sorted(labels)
    shown = ", ".join(map(repr, ordered[:10]))
    return shown + (f" and {len(ordered) - 10} more" if len(ordered) > 10 else "")
