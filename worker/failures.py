"""Why a run failed, told to its owner: an exception of the training becomes ``{type, message}``.

The message says what is wrong and what to do, in the run's own terms (``corpus corp_...``,
``checkpoint:ckpt_...``), never with the worker's file paths; tracebacks stay in the worker log. Types:

- ``corpus_format_error``: the corpus cannot be read (with ``line`` and ``corpus_id``);
- ``data_preparation_error``: the corpus cannot give training data with these parameters;
- ``base_model_error``: the base checkpoint cannot be loaded or trained;
- ``hyperparameter_error``: the parameters do not validate, or do not fit the model;
- ``resume_error``: the run's output directory holds a different run;
- ``training_error``: the run cannot go on as asked (its directory holds something else, a checkpoint
  does not fit the model);
- ``non_finite_loss``: ``max_nonfinite_steps`` steps in a row had a NaN or infinite loss or gradient, or
  an evaluation's loss was (with ``step``); the checkpoints written before stay;
- ``non_finite_weights``: the weights became NaN or infinite (with ``step``): nothing was saved or exported;
- ``out_of_memory``: the GPU (or host) ran out of memory, in every attempt;
- ``input_error``: an input named by the run is gone (a corpus, a checkpoint's files);
- ``training_process_died``: the training process ended without a result (killed, crashed), in every
  attempt the run had;
- ``worker_lost``: the worker holding the run stopped answering, in every attempt (set by the reaper,
  :func:`app.runs.lifecycle.reap_expired`);
- ``internal_error``: anything else (a bug): a generic message, the details in the worker log.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.job import TrainingJob

__all__ = [
    "RETRIED_FAILURES",
    "RunFailure",
    "describe_failure",
    "describe_process_death",
    "is_out_of_memory",
    "scrub_paths",
    "storage_failure",
    "supervisor_failure",
]

# Failures that are not the owner's doing: the attempt is retried from the newest complete checkpoint
# (up to MAX_ATTEMPTS). Out of memory is among them because another process (or a fragmented device)
# may have caused it; if the run alone does not fit, every attempt fails the same way, and the last one
# says what to change.
RETRIED_FAILURES = frozenset({"training_process_died", "out_of_memory"})


@dataclass(frozen=True)
class RunFailure:
    """What the run's owner is told (``type``, ``message`` and details such as ``line``), plus the
    traceback for the worker's log only. The training process sends it to its supervisor as is."""

    type: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = field(default=None, compare=False, repr=False)

    def as_error(self) -> dict[str, Any]:
        """The run's ``error`` column: ``{"type", "message"}`` plus the details (``line``, ``corpus_id``)."""
        return {"type": self.type, "message": self.message, **self.details}


def scrub_paths(message: str, replacements: Mapping[str, str]) -> str:
    """``message`` with each local path of ``replacements`` (longest first) replaced by its public name."""
    for path in sorted(replacements, key=len, reverse=True):
        if path:
            message = message.replace(path, replacements[path])
    return message


def _corpus_roles(job: TrainingJob) -> list[tuple[str, str, str]]:
    """(local path, role, corpus id) of the job's corpora."""
    roles = [(job.corpus, "corpus", job.corpus_id)]
    if job.eval_corpus and job.eval_corpus_id:
        roles.append((job.eval_corpus, "eval corpus", job.eval_corpus_id))
    if job.reference_corpus and job.reference_corpus_id:
        roles.append((job.reference_corpus, "reference corpus", job.reference_corpus_id))
    if job.replay_corpus and job.replay_corpus_id:
        roles.append((job.replay_corpus, "replay corpus", job.replay_corpus_id))
    return roles


def _replacements(job: TrainingJob) -> dict[str, str]:
    replacements = {path: f"{role} {corpus_id}" for path, role, corpus_id in _corpus_roles(job)}
    if Path(job.base_model).is_absolute():
        replacements[job.base_model] = job.base_model_spec
    replacements[job.out_dir] = "the run's output directory"
    replacements[job.cache_dir] = "the prepared-data cache"
    return replacements


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def supervisor_failure(label: str) -> RunFailure:
    """What the owner is told when the supervisor itself failed (a bug): ``label`` is how the worker log
    names the job (``"run run_..."``), where the traceback is."""
    return RunFailure(
        "internal_error",
        "the worker stopped on an internal error; the operators can find the details in the worker log "
        f"under {label}",
    )


def storage_failure(exc: OSError) -> RunFailure:
    """What the owner is told when the run's directory could not be copied from or to storage (S3
    unreachable, say): an interruption that is not their doing, retried like a lost worker."""
    return RunFailure("storage_error", f"the run's files could not be copied to or from storage: {exc}")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the host or a device running out of memory."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # loaded in the training process; never imported here for this
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def describe_failure(exc: BaseException, job: TrainingJob) -> RunFailure:
    """Map an exception raised by ``run_pretraining`` for ``job`` to what its owner is told."""
    # The training library's error types; imported here because this runs in the training process.
    from worker.pretraining.corpus import CorpusFormatError
    from worker.pretraining.hyperparameters import HyperparameterError
    from worker.pretraining.model_files import BaseModelError
    from worker.pretraining.prepare import PreparationError
    from worker.pretraining.run_checkpoints import ResumeError
    from worker.pretraining.trainer import NonFiniteLossError, NonFiniteWeightsError, TrainingError

    replacements = _replacements(job)

    def clean(text: str) -> str:
        return scrub_paths(text, replacements)

    if isinstance(exc, CorpusFormatError):
        role, corpus_id = "corpus", job.corpus_id
        for path, candidate_role, candidate_id in _corpus_roles(job):
            if exc.path is not None and _same_file(exc.path, path):
                role, corpus_id = candidate_role, candidate_id
        where = ", ".join(
            part
            for part in (
                f"{role} {corpus_id}",
                f"line {exc.line}" if exc.line else None,
                f"byte {exc.byte_offset}" if exc.byte_offset is not None else None,
            )
            if part
        )
        details: dict[str, Any] = {"corpus_id": corpus_id, "line": exc.line, "code": exc.code}
        return RunFailure("corpus_format_error", f"{where}: {clean(exc.message)}", details)
    if isinstance(exc, HyperparameterError):
        return RunFailure("hyperparameter_error", clean(str(exc)))
    if isinstance(exc, BaseModelError):
        return RunFailure("base_model_error", clean(str(exc)))
    if isinstance(exc, PreparationError):
        return RunFailure("data_preparation_error", clean(str(exc)))
    if isinstance(exc, ResumeError):
        return RunFailure("resume_error", clean(str(exc)))
    if isinstance(exc, NonFiniteLossError):
        return RunFailure("non_finite_loss", clean(str(exc)), {"step": exc.step})
    if isinstance(exc, NonFiniteWeightsError):
        return RunFailure("non_finite_weights", clean(str(exc)), {"step": exc.step})
    if isinstance(exc, TrainingError):
        # The output directory holds something else, a checkpoint does not fit the model.
        return RunFailure("training_error", clean(str(exc)))
    if is_out_of_memory(exc):
        where = "host" if isinstance(exc, MemoryError) else "device"
        h = job.hyperparameters
        return RunFailure(
            "out_of_memory",
            f"the training ran out of {where} memory (batch_size {h.get('batch_size', 'default')}, "
            f"max_seq_length {h.get('max_seq_length', 'default')}). Lower batch_size (raise "
            "gradient_accumulation_steps to keep the effective batch) or max_seq_length, and submit again.",
        )
    return RunFailure(
        "internal_error",
        f"the training stopped on an internal error ({type(exc).__name__}); the operators can find the "
        f"details in the worker log under run {job.run_id}",
    )


def describe_process_death(
    exitcode: int | None, *, process: str = "training process", type: str = "training_process_died"
) -> RunFailure:
    """The ``process`` (an evaluation's: ``"evaluation process"``, type ``evaluation_process_died``) ended
    without reporting a result or an error: how it ended (what becomes of the job, retried or failed, is
    its executor's to say)."""
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            how = f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
        if exitcode == -signal.SIGKILL:
            how += " (often the host's out-of-memory killer)"
    else:
        how = f"exited with status {exitcode}"
    return RunFailure(type, f"the {process} {how} before finishing", {"exit_code": exitcode})
