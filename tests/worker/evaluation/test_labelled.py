"""The labelled-dataset reader: the three formats, every kind of error with its file, line and field, labels
kept as strings, and the seeded stratified split."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from worker.evaluation.labelled import (
    MAX_FIELD_CHARS,
    MIN_EXAMPLES_PER_LABEL,
    DatasetFormatError,
    LabelledExample,
    read_labelled_dataset,
    stratified_split,
)

ROWS = [("good film", "pos"), ("bad film", "neg")] * MIN_EXAMPLES_PER_LABEL


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def tsv(rows: list[tuple[str, ...]], header: str = "text\tlabel") -> str:
    return header + "\n" + "".join("\t".join(row) + "\n" for row in rows)


def jsonl(records: list[dict[str, object]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def error_of(path: Path, **kwargs: object) -> DatasetFormatError:
    with pytest.raises(DatasetFormatError) as caught:
        read_labelled_dataset(path, **kwargs)  # type: ignore[arg-type]
    return caught.value


def assert_error(
    error: DatasetFormatError, file: str, line: int | None, field: str | None, text: str
) -> None:
    assert (error.file, error.line, error.field) == (file, line, field), str(error)
    assert text in str(error)


def test_tsv_is_read_unquoted_with_extra_columns_ignored(tmp_path: Path) -> None:
    # GLUE-style TSV: a quote is a character, not quoting; the id column is ignored.
    rows = [("1", ' "quoted start', "pos"), ("2", "it's  bad ", "neg")] * MIN_EXAMPLES_PER_LABEL
    path = write(tmp_path, "train.tsv", "\ufeff" + tsv(rows, header="id\ttext\tlabel") + "\n\n")
    dataset = read_labelled_dataset(path)
    assert dataset.format == "tsv" and not dataset.has_text_pair
    assert dataset.labels == ("neg", "pos")
    assert dataset.ignored_columns == ("id",)
    assert dataset.examples[:2] == (
        LabelledExample(text='"quoted start', label="pos"),
        LabelledExample(text="it's  bad", label="neg"),
    )
    assert dataset.label_counts() == {"neg": 4, "pos": 4}


def test_csv_quoting_line_breaks_and_text_pairs(tmp_path: Path) -> None:
    rows = '"A man, a plan","a canal\r\nPanama",yes\r\n"He said ""hi""",greeting,no\r\n'
    path = write(tmp_path, "pairs.csv", "text,text_pair,label\r\n" + rows * MIN_EXAMPLES_PER_LABEL)
    dataset = read_labelled_dataset(path)
    assert dataset.format == "csv" and dataset.has_text_pair
    assert dataset.examples[0] == LabelledExample("A man, a plan", "yes", "a canal\r\nPanama")
    assert dataset.examples[1] == LabelledExample('He said "hi"', "no", "greeting")
    assert len(dataset.examples) == 2 * MIN_EXAMPLES_PER_LABEL


def test_jsonl_labels_are_kept_as_strings(tmp_path: Path) -> None:
    records = [{"text": f"t{i}", "label": value} for i, value in enumerate([1, "1", 0, True] * 4)]
    dataset = read_labelled_dataset(write(tmp_path, "d.jsonl", jsonl(records)))
    assert dataset.format == "jsonl"
    # 1 and "1" are one class; a boolean keeps its JSON spelling.
    assert dataset.labels == ("0", "1", "true")
    assert dataset.label_counts() == {"0": 4, "1": 8, "true": 4}
    assert all(isinstance(example.label, str) for example in dataset.examples)


def test_text_and_labels_are_stripped_and_nfc_normalized(tmp_path: Path) -> None:
    rows = [("cafe\u0301 ", " caf\u00e9"), ("plain", "other ")] * MIN_EXAMPLES_PER_LABEL
    dataset = read_labelled_dataset(write(tmp_path, "d.tsv", tsv(rows)))
    assert dataset.labels == ("caf\u00e9", "other")
    assert dataset.examples[0].text == "caf\u00e9"


def test_name_gives_the_format_and_the_file_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "upload.part", tsv([("", "pos")]))
    error = error_of(path, name="train.tsv")
    assert str(error) == "train.tsv line 2: field 'text' is empty"


@pytest.mark.parametrize(
    ("name", "content", "line", "field", "text"),
    [
        ("d.txt", "x", None, None, "is not one of"),
        ("d.tsv", "", None, None, "the file is empty"),
        ("d.tsv", "text\tlabel\n\n", None, None, "has no examples"),
        ("d.tsv", "text\ttext\tlabel\n", 1, None, "column 'text' appears twice"),
        ("d.tsv", "sentence\tlabel\na\tb\n", 1, "text", "is missing"),
        ("d.tsv", "Text\tlabel\na\tb\n", 1, "text", "there is a column 'Text'"),
        ("d.tsv", "text\tlabels\na\tb\n", 1, "label", "rename it to 'label'"),
        ("d.tsv", "text\ttext_pairs\tlabel\na\tb\tc\n", 1, "text_pair", "there is a column 'text_pairs'"),
        ("d.tsv", tsv(ROWS[:3]) + "a\tb\tc\n", 5, None, "the row has 3 fields, the header has 2"),
        ("d.tsv", tsv(ROWS[:2]) + "   \tpos\n", 4, "text", "is empty"),
        ("d.tsv", tsv(ROWS[:2]) + "fine\t \n", 4, "label", "is empty"),
        ("d.tsv", tsv([ROWS[0], ("x" * (MAX_FIELD_CHARS + 1), "pos")]), 3, "text", "the limit is"),
        ("d.csv", 'text,label\n"a\nb",pos\n"bad"x,neg\n', 4, None, "not valid CSV"),
        ("d.csv", "text,text_pair,label\na,,pos\n", 2, "text_pair", "is empty"),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", \n', 2, None, "not valid JSON"),
        ("d.jsonl", '["a", "x"]\n', 1, None, "holds an array, not an object"),
        ("d.jsonl", '{"text": "a", "label": "x"}\n\n{"label": "y"}\n', 3, "text", "is missing"),
        ("d.jsonl", '{"text": 5, "label": "x"}\n', 1, "text", "must be a string, not a number"),
        ("d.jsonl", '{"text": "a", "label": 0.5}\n', 1, "label", "must be a class name"),
        ("d.jsonl", '{"text": "a", "label": null}\n', 1, "label", "must be a class name"),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "text_pair": "c", "label": "y"}\n', 2,
         "text_pair", "not in the first record"),
        ("d.jsonl", '{"text": "a", "text_pair": "c", "label": "x"}\n{"text": "b", "label": "y"}\n', 2,
         "text_pair", "is missing"),
    ],
)  # fmt: skip
def test_errors_name_the_file_line_and_field(
    tmp_path: Path, name: str, content: str, line: int | None, field: str | None, text: str
) -> None:
    assert_error(error_of(write(tmp_path, name, content)), name, line, field, text)


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", b"text\tlabel\nok\tpos\nbad \xff\tneg\n")
    assert_error(error_of(path), "d.tsv", 3, None, "not UTF-8")


def test_size_cap(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", tsv(ROWS))
    size = path.stat().st_size
    assert_error(error_of(path, max_bytes=size - 1), "d.tsv", None, None, f"the limit is {size - 1:,} bytes")
    assert len(read_labelled_dataset(path, max_bytes=size).examples) == len(ROWS)


def test_at_least_two_labels_and_enough_examples_of_each(tmp_path: Path) -> None:
    one_label = write(tmp_path, "one.tsv", tsv([("a", "pos")] * 10))
    assert_error(error_of(one_label), "one.tsv", None, "label", "has 1 distinct label ('pos')")
    rare = write(tmp_path, "rare.tsv", tsv(ROWS + [("x", "meh")] * (MIN_EXAMPLES_PER_LABEL - 1)))
    assert_error(
        error_of(rare), "rare.tsv", None, "label", f"too few examples of 'meh' ({MIN_EXAMPLES_PER_LABEL - 1})"
    )


def test_a_test_file_may_be_small_but_has_only_known_labels(tmp_path: Path) -> None:
    small = write(tmp_path, "test.tsv", tsv([("a", "pos")]))
    assert read_labelled_dataset(small, known_labels=("neg", "pos")).labels == ("pos",)
    unknown = write(tmp_path, "test2.tsv", tsv([("a", "pos"), ("b", "meh")]))
    assert_error(
        error_of(unknown, known_labels=("neg", "pos")), "test2.tsv", 3, "label", "'meh', a label that"
    )


def test_the_error_pickles_with_its_location() -> None:
    error = pickle.loads(pickle.dumps(DatasetFormatError("is empty", "t.tsv", 14, "label")))
    assert (error.file, error.line, error.field, str(error)) == (
        "t.tsv",
        14,
        "label",
        "t.tsv line 14: field 'label' is empty",
    )


def test_the_module_imports_nothing_heavy() -> None:
    heavy = "{'numpy', 'torch', 'transformers'}"
    code = f"import sys, worker.evaluation.labelled; print(sorted({heavy} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "[]\n"
    )


def examples(counts: dict[str, int]) -> list[LabelledExample]:
    return [LabelledExample(f"{label} {i}", label) for label, count in counts.items() for i in range(count)]


def test_stratified_split_is_deterministic_and_keeps_the_order() -> None:
    data = examples({"a": 30, "b": 10, "c": 5})
    rest, held_out = stratified_split(data, 0.2, seed=7)
    assert (rest, held_out) == stratified_split(data, 0.2, seed=7)
    assert stratified_split(data, 0.2, seed=8)[1] != held_out
    assert sorted(rest + held_out, key=data.index) == data
    assert rest == [e for e in data if e in rest] and held_out == [e for e in data if e in held_out]
    assert Counter(e.label for e in held_out) == {"a": 6, "b": 2, "c": 1}


def test_stratified_split_puts_every_label_with_two_examples_in_both_parts() -> None:
    data = examples({"big": 100, "two": 2, "one": 1})
    rest, held_out = stratified_split(data, 0.01, seed=0)
    assert Counter(e.label for e in held_out) == {"big": 1, "two": 1}
    rest, held_out = stratified_split(data, 0.99, seed=0)
    assert Counter(e.label for e in rest) == {"big": 1, "two": 1, "one": 1}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_refuses_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_split(examples({"a": 4, "b": 4}), fraction, seed=0)
