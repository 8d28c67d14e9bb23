"""What a run's owner is told when training fails: a type and a message in the run's terms."""

from __future__ import annotations

import signal

from worker.failures import RETRIED_FAILURES, describe_failure, describe_process_death
from worker.job import TrainingJob
from worker.pretraining.corpus import CorpusFormatError
from worker.pretraining.hyperparameters import HyperparameterError
from worker.pretraining.model_files import BaseModelError
from worker.pretraining.trainer import NonFiniteLossError, NonFiniteWeightsError

JOB = TrainingJob(
    run_id="run_abc",
    base_model="/srv/storage/checkpoints/ckpt_1",
    base_model_spec="checkpoint:ckpt_1",
    corpus="/srv/storage/corpora/corp_1/corpus.txt",
    corpus_id="corp_1",
    eval_corpus="/srv/storage/corpora/corp_2/corpus.txt",
    eval_corpus_id="corp_2",
    out_dir="/srv/storage/runs/run_abc",
    cache_dir="/srv/storage/prepared",
    hyperparameters={"batch_size": 64, "max_seq_length": 512},
)


def test_corpus_errors_name_the_corpus_and_line_not_the_path() -> None:
    exc = CorpusFormatError(
        "invalid UTF-8", code="invalid_utf8", line=3, byte_offset=41, path=JOB.eval_corpus
    )
    failure = describe_failure(exc, JOB)
    assert failure.as_error() == {
        "type": "corpus_format_error",
        "message": "eval corpus corp_2, line 3, byte 41: invalid UTF-8",
        "corpus_id": "corp_2",
        "line": 3,
        "code": "invalid_utf8",
    }


def test_library_errors_keep_their_message_without_local_paths() -> None:
    failure = describe_failure(BaseModelError(f"{JOB.base_model}: no config.json"), JOB)
    assert (failure.type, failure.message) == ("base_model_error", "checkpoint:ckpt_1: no config.json")
    failure = describe_failure(HyperparameterError([("batch_size", "must be at least 1")]), JOB)
    assert (failure.type, failure.message) == ("hyperparameter_error", "batch_size: must be at least 1")


def test_out_of_memory_advises_and_bugs_stay_generic() -> None:
    failure = describe_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), JOB)
    assert failure.type == "out_of_memory" and "batch_size 64" in failure.message
    failure = describe_failure(KeyError(f"secret detail at {JOB.out_dir}"), JOB)
    assert failure.type == "internal_error"
    assert "secret" not in failure.message and "/srv" not in failure.message and "run_abc" in failure.message


def test_a_killed_training_process_is_explained() -> None:
    failure = describe_process_death(-signal.SIGKILL)
    assert failure.as_error() == {
        "type": "training_process_died",
        "message": "the training process was killed by signal SIGKILL (often the host's out-of-memory "
        "killer) before finishing",
        "exit_code": -signal.SIGKILL,
    }
    assert describe_process_death(1).message == "the training process exited with status 1 before finishing"
    # What becomes of the run (retried, or failed and resumable) is the executor's to say.
    assert {"training_process_died", "out_of_memory"} == RETRIED_FAILURES


def test_non_finite_failures_keep_their_step_and_hint() -> None:
    exc = NonFiniteLossError(12, "the loss was NaN", fp16=True, from_start=False, last_checkpoint=None)
    failure = describe_failure(exc, JOB)
    assert (failure.type, failure.details) == ("non_finite_loss", {"step": 12})
    assert failure.message == (
        "the loss was NaN: lower learning_rate, use bf16 instead of fp16 (fp16's range is small), check the "
        "data (and max_grad_norm); no checkpoint was written"
    )
    failure = describe_failure(NonFiniteWeightsError("bert.pooler.dense.bias", 30), JOB)
    assert failure.as_error() == {
        "type": "non_finite_weights",
        "message": "parameter bert.pooler.dense.bias holds NaN or infinite values at step 30: the training "
        "diverged; lower learning_rate and resume from an earlier checkpoint",
        "step": 30,
    }
