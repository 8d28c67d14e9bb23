"""What the owner of a corpus analysis is told when it fails: the error types, the corpus's line, no path
of the worker's (the whole analysis, through a real worker: tests/e2e/test_service_e2e.py)."""

from __future__ import annotations

from worker.analyses import AnalysisJob, describe_analysis_failure
from worker.pretraining.corpus import CorpusFormatError
from worker.pretraining.hyperparameters import HyperparameterError
from worker.pretraining.model_files import BaseModelError
from worker.pretraining.preparation_rules import PreparationError

JOB = AnalysisJob(
    analysis_id="ana_x",
    corpus="/srv/storage/corpora/corp_1.txt",
    corpus_id="corp_1",
    tokenizer="/srv/storage/checkpoints/ckpt_2",
    base_model_spec="checkpoint:ckpt_2",
    cache_dir="/srv/storage/prepared",
    hyperparameters={},
)


def test_failures_name_the_corpus_and_the_base_model_not_the_workers_paths() -> None:
    bad_line = CorpusFormatError("invalid UTF-8", code="invalid_utf8", line=7, path=JOB.corpus)
    failure = describe_analysis_failure(bad_line, JOB)
    assert (failure.type, failure.details) == ("corpus_format_error", {"line": 7, "code": "invalid_utf8"})
    assert failure.message == "corpus corp_1, line 7: invalid UTF-8"

    no_tokenizer = BaseModelError(f"{JOB.tokenizer}: no usable tokenizer")
    assert describe_analysis_failure(no_tokenizer, JOB).as_error() == {
        "type": "base_model_error",
        "message": "checkpoint:ckpt_2: no usable tokenizer",
    }
    too_few = PreparationError(f"{JOB.corpus} has 1 usable document", field="nsp")
    assert describe_analysis_failure(too_few, JOB).message == "corpus corp_1 has 1 usable document"
    assert (
        describe_analysis_failure(HyperparameterError([("seed", "bad")]), JOB).type == "hyperparameter_error"
    )
    bug = describe_analysis_failure(KeyError("x"), JOB)
    assert bug.type == "internal_error" and "ana_x" in bug.message and "KeyError" not in bug.message
