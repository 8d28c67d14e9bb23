"""The sample corpus the demo and the benchmarks build from this machine's standard library (the tests
use tests/synthetic.py instead: the same text everywhere)."""

from __future__ import annotations

from pathlib import Path

from worker.pretraining.corpus import scan_corpus
from worker.pretraining.samples import write_sample_corpus


def test_a_sample_corpus_is_a_valid_corpus_of_the_documents_asked_for(tmp_path: Path) -> None:
    report = scan_corpus(write_sample_corpus(tmp_path / "corpus.txt", max_documents=50))
    assert report.stats.documents == 50 and report.stats.sentences >= 100
    assert [warning.code for warning in report.warnings] == []
