"""Stand-in evaluation processes for the evaluation executor tests (a spawned process finds its target by
module and name, so they live in a module of their own)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any


def killed_at_once(job: Any, messages: Any, stop: Any) -> None:
    """Killed (SIGKILL, as by the out-of-memory killer) before it reports anything."""
    os.kill(os.getpid(), signal.SIGKILL)


def one_fit_then_until_stopped(job: Any, messages: Any, stop: Any) -> None:
    """The real evaluation process, whose comparison reports its first fit and then computes until it is
    asked to stop (as compare_models polls ``should_stop`` after every batch)."""
    from worker import evaluation_process
    from worker.evaluation.compare import EvaluationCancelled
    from worker.evaluation.results import EvaluationProgress

    def evaluate(job: Any, *, progress: Any, should_stop: Any) -> Any:
        name = job.models[0].name
        progress(EvaluationProgress(model=name, model_index=0, seed=0, done=1, total=2 * len(job.models)))
        deadline = time.monotonic() + 120  # never hangs the test: the executor would see it end
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise EvaluationCancelled("the evaluation was cancelled")

    evaluation_process.evaluate = evaluate  # type: ignore[assignment]
    evaluation_process.run_evaluation_job(job, messages, stop)
