"""``run_pretraining``: one continual pre-training run, from a base checkpoint and a corpus to a model.

The CLI and the service's training process both call it. It reads top to bottom as its steps:

1. load the base checkpoint and check the hyperparameters against it (:func:`_load_base`);
2. prepare the instances, or find them in the cache (:func:`_prepare_data`);
3. look in the run directory for an earlier attempt: a finished model (returned as is) or the newest
   complete checkpoint of the same run to resume from (:func:`_resume_point`);
4. build the trainer (:func:`_build_trainer`: collators, eval splits, sinks, TrainingArguments);
5. train, evaluate at the end if not done yet, export the model and write ``result.json``
   (:func:`_train_and_export`).

Every record goes to the caller's sink (see :mod:`worker.pretraining.records`) and into the run's own
``metrics.jsonl`` and TensorBoard files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch

from worker.pretraining.base_model import LoadedBase, load_base_model, non_finite_parameter
from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.hyperparameters import HyperparameterError, Hyperparameters, load_hyperparameters
from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST, RunLayout
from worker.pretraining.masking import MaskingConfig, TokenMasker
from worker.pretraining.model_files import segment_types_error, sequence_length_error, weight_files
from worker.pretraining.prepare import PreparedData, file_sha256, prepare_corpus, prepare_eval_corpus
from worker.pretraining.records import (
    LogLine,
    ModelManifest,
    RunWarning,
    TrainingFailed,
    TrainingFinished,
    TrainingOutcome,
    TrainingResult,
    TrainingStarted,
    TrainingStatus,
)
from worker.pretraining.run_checkpoints import (
    ResumeError,
    latest_checkpoint,
    publish_directory,
    read_json,
    remove_incomplete,
    resume_mismatches,
    temporary_sibling,
    write_json,
)
from worker.pretraining.sinks import JsonlSink, RecordSink, TensorBoardSink, combine_sinks
from worker.pretraining.tokenizer import quiet_transformers
from worker.pretraining.trainer import (
    NonFiniteWeightsError,
    PretrainingTrainer,
    RunState,
    StopCheck,
    TrainingError,
    steps_per_epoch,
    total_steps,
    training_arguments,
)

__all__ = ["MANIFEST_FORMAT", "export_model", "resolve_precision", "run_pretraining"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
MANIFEST_FORMAT = 1  # of bertpt_manifest.json
SKIPPED_STEPS = "skipped_steps"  # the code of the warning of a run that skipped steps
# A final held-out masked-LM loss more than this share above the baseline's warns (eval_loss_increased).
EVAL_LOSS_INCREASE_WARNING = 0.01
_clock = time.monotonic  # the wall clock of max_runtime_seconds (tests replace it)


def resolve_precision(precision: str, *, cuda: bool | None = None) -> Precision:
    """auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on the CPU."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise HyperparameterError(
            [("precision", "fp16 mixed precision needs a GPU; use fp32 or bf16 on the CPU")]
        )
    if precision not in ("fp32", "bf16", "fp16"):
        raise HyperparameterError([("precision", f"unknown value {precision!r}")])
    return precision  # type: ignore[return-value]


def run_pretraining(
    base: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    hyperparameters: Hyperparameters | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    eval_corpus: str | os.PathLike[str] | None = None,
    reference_corpus: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    sink: RecordSink | None = None,
    should_stop: StopCheck | None = None,
    resume: bool = True,
    dataloader_workers: int | None = None,
) -> TrainingResult:
    """Continue pre-training ``base`` on ``corpus``; write everything under ``out_dir``.

    ``hyperparameters``: a Hyperparameters, a dict or a run-config path. ``eval_corpus``: held-out
    domain text (else ``eval_fraction`` of the corpus documents). ``reference_corpus``: general-domain
    text evaluated alongside, to watch forgetting. ``cache_dir``: prepared-data cache (default
    ``<out_dir>/../.bertpt-cache``). ``sink(record)`` receives every record (metrics, events, progress,
    log lines; without a sink the log lines go to this module's logger). ``should_stop()`` is polled
    every step: when true, a checkpoint is written and the run ends "cancelled". ``max_runtime_seconds``
    ends it "timed_out" the same way, but evaluated and exported. With ``resume`` (the default), a run
    interrupted in ``out_dir`` continues from its newest complete checkpoint if it is the same run (same
    base weights, corpus, data and hyperparameters; otherwise ResumeError), and a run already completed
    there is returned as is.
    Raises BaseModelError, HyperparameterError (also for parameters that do not fit the model or the
    device), PreparationError / CorpusFormatError, ResumeError or TrainingError for what cannot run, and
    NonFiniteLossError / NonFiniteWeightsError (TrainingErrors) when the numbers stop being finite.
    """
    attempt_started = _clock()
    h = _hyperparameters(hyperparameters)
    layout = RunLayout(Path(out_dir))
    cache = Path(cache_dir) if cache_dir is not None else layout.root.absolute().parent / ".bertpt-cache"
    say = _say(sink)
    cuda = torch.cuda.is_available()
    precision = resolve_precision(h.precision, cuda=cuda)

    loaded = _load_base(base, h, say)
    data, reference = _prepare_data(h, loaded, corpus, eval_corpus, reference_corpus, cache, say)
    run_info = _run_info(h, loaded, data, reference)
    warnings = _warnings(loaded, data, reference, say)
    finished = _finished_run(layout, run_info, resume)
    if finished is not None:
        say(f"{layout.model} already holds this run's final model")
        return finished
    start = _resume_point(layout, run_info, resume)
    max_steps = total_steps(h, len(data.train))
    if start.checkpoint is not None:
        say(f"resuming from {start.checkpoint} (step {start.step} of {max_steps})")

    device = "cuda" if cuda else "cpu"
    layout.root.mkdir(parents=True, exist_ok=True)
    tensorboard = TensorBoardSink(layout.tensorboard, purge_step=start.step + 1 if start.checkpoint else None)
    emit = combine_sinks(JsonlSink(layout.metrics), tensorboard, sink)
    try:
        trainer = _build_trainer(
            h,
            layout,
            loaded,
            data,
            reference,
            start,
            max_steps=max_steps,
            precision=precision,
            cuda=cuda,
            sink=emit,
            should_stop=should_stop,
            deadline=attempt_started + h.max_runtime_seconds if h.max_runtime_seconds else None,
            dataloader_workers=_default_workers(cuda) if dataloader_workers is None else dataloader_workers,
            run_info=run_info,
        )
        emit(
            TrainingStarted(
                step=start.step,
                max_steps=max_steps,
                resumed_from_step=start.step if start.checkpoint else None,
                train_instances=len(data.train),
                eval_splits={name: len(split) for name, split in trainer.eval_splits.items()},
                precision=precision,
                device=device,
                data=data.summary(),
                warnings=warnings,
            )
        )
        say(f"training {max_steps} steps on {len(data.train)} instances ({precision}, {device})")
        try:
            result = _train_and_export(
                trainer, layout, run_info, loaded, data.key, warnings, precision, start, say
            )
        except BaseException as exc:
            step = getattr(exc, "step", trainer.state.global_step)  # where a NaN was met, if that is why
            emit(TrainingFailed(step=step, error=f"{type(exc).__name__}: {exc}"))
            raise
        emit(TrainingFinished(step=result.steps, status=result.status, model_path=result.model_path))
        return result
    finally:
        tensorboard.close()


# --------------------------------------------------------------------------------------------------
# The steps


def _hyperparameters(
    given: Hyperparameters | Mapping[str, Any] | str | os.PathLike[str] | None,
) -> Hyperparameters:
    if isinstance(given, Hyperparameters):
        return given
    if given is None or isinstance(given, Mapping):
        return load_hyperparameters(dict(given or {}))
    return load_hyperparameters(Path(given))


def _say(sink: RecordSink | None) -> Any:
    """Where the run's human-readable lines go: the sink as LogLine records, else the logger."""
    if sink is None:
        return logger.info
    return lambda message: sink(LogLine(message=message))


def _load_base(base: str | os.PathLike[str], h: Hyperparameters, say: Any) -> LoadedBase:
    from transformers import set_seed

    set_seed(h.seed)  # heads missing from the checkpoint are initialized reproducibly
    say(f"loading the base model {base}")
    loaded = load_base_model(base)
    for warning in loaded.warnings:
        say(f"warning: {warning.message}")
    config = loaded.config
    too_long = sequence_length_error(h.max_seq_length, config.max_position_embeddings)
    if too_long is not None:
        raise HyperparameterError([("max_seq_length", too_long)])
    one_segment = segment_types_error(h.nsp, config.type_vocab_size)
    if one_segment is not None:
        raise HyperparameterError([("nsp", one_segment)])
    return loaded


def _prepare_data(
    h: Hyperparameters,
    loaded: LoadedBase,
    corpus: str | os.PathLike[str],
    eval_corpus: str | os.PathLike[str] | None,
    reference_corpus: str | os.PathLike[str] | None,
    cache: Path,
    say: Any,
) -> tuple[PreparedData, PreparedData | None]:
    """The training data (with its eval split) and the reference corpus's eval split, if any."""
    data = prepare_corpus(
        Path(corpus),
        loaded.tokenizer,
        cache,
        h.preparation(),
        eval_corpus=Path(eval_corpus) if eval_corpus is not None else None,
        log=say,
    )
    reference = (
        prepare_eval_corpus(Path(reference_corpus), loaded.tokenizer, cache, h.preparation())
        if reference_corpus is not None
        else None
    )
    return data, reference


def _warnings(
    loaded: LoadedBase, data: PreparedData, reference: PreparedData | None, say: Any
) -> list[RunWarning]:
    """Everything the user should know about the inputs, in one list of one shape: the corpora's and the
    preparation's warnings, then the base model's."""
    found = [*data.warnings, *(reference.warnings if reference is not None else []), *loaded.warnings]
    for warning in found[: len(found) - len(loaded.warnings)]:  # the model's were said when it loaded
        say(f"warning: {warning.message}")
    return found


def _run_info(
    h: Hyperparameters, loaded: LoadedBase, data: PreparedData, reference: PreparedData | None
) -> dict[str, Any]:
    """What identifies the run: a resume must match it (see ``resume_mismatches``)."""
    digests = [file_sha256(loaded.path / name) for name in weight_files(loaded.path)]
    weights = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
    return {
        "hyperparameters": h.model_dump(mode="json"),
        "corpus_sha256": data.manifest["corpus_sha256"],
        "eval_corpus_sha256": data.manifest.get("eval_corpus_sha256"),
        "data_key": data.key,
        "reference_corpus_sha256": reference.manifest["corpus_sha256"] if reference else None,
        "reference_data_key": reference.key if reference else None,
        "base_model": loaded.source,
        "base_model_path": str(loaded.path),
        "base_model_sha256": weights,
    }


def _finished_run(layout: RunLayout[Path], run_info: dict[str, Any], resume: bool) -> TrainingResult | None:
    """The result of this very run when its final model is already in ``layout`` (ResumeError when the
    model there is another run's)."""
    written = read_json(layout.model / MODEL_MANIFEST)
    if written is None:
        return None
    if not resume:
        raise _already_holds_a_run(layout)
    manifest = ModelManifest.model_validate(written)
    if manifest.status != "completed":
        return None  # timed out: training continues where it stopped
    problems = resume_mismatches({"run": manifest.run}, run_info)
    if problems:
        raise ResumeError(layout.root, problems)
    return TrainingResult(
        **manifest.outcome_fields(),
        run_dir=layout.root,
        model_path=layout.model,
        checkpoint_path=latest_checkpoint(layout.checkpoints),
    )


def _already_holds_a_run(layout: RunLayout[Path]) -> TrainingError:
    return TrainingError(
        f"{layout.root} already holds a run (checkpoints or a model); resume it or use another directory"
    )


@dataclass(frozen=True)
class _Start:
    """Where training starts: from scratch, or from a checkpoint with the state it carries."""

    checkpoint: Path | None = None
    step: int = 0
    state: RunState | None = None


def _resume_point(layout: RunLayout[Path], run_info: dict[str, Any], resume: bool) -> _Start:
    remove_incomplete(layout.checkpoints)
    latest = latest_checkpoint(layout.checkpoints)
    if latest is None:
        return _Start()
    if not resume:
        raise _already_holds_a_run(layout)
    manifest = read_json(latest / CHECKPOINT_MANIFEST) or {}
    problems = resume_mismatches(manifest, run_info)
    if problems:
        raise ResumeError(layout.root, problems)
    return _Start(
        checkpoint=latest, step=int(manifest.get("step", 0)), state=RunState.from_manifest(manifest)
    )


def _default_workers(cuda: bool) -> int:
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if cuda else 0


def _build_trainer(
    h: Hyperparameters,
    layout: RunLayout[Path],
    loaded: LoadedBase,
    data: PreparedData,
    reference: PreparedData | None,
    start: _Start,
    *,
    max_steps: int,
    precision: Precision,
    cuda: bool,
    sink: RecordSink,
    should_stop: StopCheck | None,
    deadline: float | None,
    dataloader_workers: int,
    run_info: dict[str, Any],
) -> PretrainingTrainer:
    tokenizer = loaded.tokenizer
    fixed_predictions = h.max_predictions_per_seq if h.torch_compile else None  # static shapes
    masker = (
        TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(h), tokenizer)
        if h.masking == "dynamic"
        else None
    )

    def collator(masker: TokenMasker | None) -> PretrainingCollator:
        return PretrainingCollator(
            pad_token_id=tokenizer.pad_token_id,
            masker=masker,
            seed=h.seed,
            pad_to_multiple_of=8,
            max_predictions_per_seq=fixed_predictions,
        )

    eval_splits: dict[Any, Any] = {}
    if data.eval is not None:
        eval_splits["eval"] = data.eval
    if reference is not None and reference.eval is not None:
        eval_splits["reference"] = reference.eval
    model = loaded.model
    if h.torch_compile:
        model.bert.compile()
        model.cls.predictions.compile()
    return PretrainingTrainer(
        model=model,
        args=training_arguments(
            h,
            layout.checkpoints,
            max_steps=max_steps,
            precision=precision,
            cuda=cuda,
            dataloader_workers=dataloader_workers,
            evaluate_at_start=start.checkpoint is None and bool(eval_splits),
        ),
        data_collator=collator(masker),
        processing_class=tokenizer,  # saved into every checkpoint: `run:<id>@<step>` loads as a base
        train_dataset=data.train,
        nsp=h.nsp,
        eval_splits=eval_splits,
        eval_collator=collator(None),  # the eval splits carry fixed masks
        sink=sink,
        should_stop=should_stop,
        deadline=deadline,
        clock=_clock,
        eval_every_steps=h.eval_every_steps,
        checkpoint_every_steps=h.checkpoint_every_steps,
        keep_checkpoints=h.keep_checkpoints,
        run_info=run_info,
        run_state=start.state or RunState(),
        updates_per_epoch=steps_per_epoch(len(data.train), h.batch_size, h.gradient_accumulation_steps),
        max_nonfinite_steps=h.max_nonfinite_steps,
    )


def _train_and_export(
    trainer: PretrainingTrainer,
    layout: RunLayout[Path],
    run_info: dict[str, Any],
    loaded: LoadedBase,
    data_key: str,
    warnings: list[RunWarning],
    precision: Precision,
    start: _Start,
    say: Any,
) -> TrainingResult:
    """Train (or resume), evaluate at the end if not done yet, export, write result.json."""
    max_steps = trainer.args.max_steps
    if start.checkpoint is not None and start.step >= max_steps:
        # The last checkpoint is the final step (the export did not happen): Trainer would train one
        # step too many on resume, so take the weights and finish.
        trainer._load_from_checkpoint(str(start.checkpoint))
        trainer.state.global_step = start.step
    else:
        trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
    run_state = trainer.run_state
    status: TrainingStatus = trainer.stop_status or "completed"
    step = trainer.state.global_step
    if status != "cancelled" and trainer.eval_splits and run_state.last_eval_step != step:
        trainer.evaluate()
    trainer._take_tokens_seen()
    outcome = TrainingOutcome(
        status=status,
        steps=step,
        max_steps=max_steps,
        baseline_metrics=run_state.baseline,
        final_metrics=run_state.last_eval,
        final_metrics_step=run_state.last_eval_step,
        train_metrics=run_state.last_train,
        warnings=[*warnings, *_training_warnings(run_state, step)],
        runtime_seconds=round(run_state.runtime_seconds + trainer.attempt_seconds(), 3),
        samples_seen=run_state.samples_seen,
        tokens_seen=run_state.tokens_seen,
        skipped_steps=run_state.skipped_steps,
        data_key=data_key,
    ).outcome_fields()
    model_path: Path | None = None
    if status != "cancelled":
        manifest = ModelManifest(
            **outcome,
            format=MANIFEST_FORMAT,
            run=run_info,
            hyperparameters=run_info["hyperparameters"],
            corpus_sha256=run_info["corpus_sha256"],
            base_model=loaded.source,
            precision=precision,
            versions=_versions(),
            created_at=datetime.now(UTC),
        )
        say(f"writing the model to {layout.model}")
        model_path = export_model(
            trainer.accelerator.unwrap_model(trainer.model), loaded.tokenizer, layout.model, manifest
        )
    result = TrainingResult(
        **outcome,
        run_dir=layout.root,
        model_path=model_path,
        checkpoint_path=latest_checkpoint(layout.checkpoints),
        resumed_from=start.checkpoint,
    )
    write_json(layout.result, result.json_object())
    return result


def _versions() -> dict[str, str]:
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _training_warnings(run_state: RunState, steps: int) -> list[RunWarning]:
    """What the training itself found, for the result: optimizer steps skipped as not finite, and a
    held-out masked-LM loss that ended above the baseline's."""
    warnings: list[RunWarning] = []
    skipped = run_state.skipped_steps
    if skipped:
        message = (
            f"{skipped} of the {steps} optimizer steps were not applied because their loss or gradient was "
            "not finite (NaN or infinite; see the step_skipped events): the model trained on fewer steps "
            "than asked. If there are many, lower learning_rate, use bf16 rather than fp16, or check the "
            "data."
        )
        warnings.append(RunWarning(code=SKIPPED_STEPS, count=skipped, message=message))
    before, after = run_state.baseline.get("eval"), run_state.last_eval.get("eval")
    if (
        before is not None
        and after is not None
        and run_state.last_eval_step
        and after.masked_lm_loss > before.masked_lm_loss * (1 + EVAL_LOSS_INCREASE_WARNING)
    ):
        message = (
            f"the held-out masked_lm_loss rose from {before.masked_lm_loss:.4f} (the base checkpoint, step "
            f"0) to {after.masked_lm_loss:.4f} at step {run_state.last_eval_step}: this training made the "
            "model worse on held-out domain text. The learning rate is probably too high (or the warm-up "
            "too short); compare the eval curve with the training loss."
        )
        warnings.append(RunWarning(code="eval_loss_increased", message=message))
    return warnings


def export_model(model: Any, tokenizer: Any, target: Path, manifest: ModelManifest) -> Path:
    """The final model as a Hugging Face directory (safetensors, config with
    ``architectures: ["BertForPreTraining"]``, tokenizer, ``bertpt_manifest.json``), published
    atomically.

    Raises NonFiniteWeightsError, before writing anything, if a weight is NaN or infinite: nothing that is
    not finite is ever exported.
    """
    parameter = non_finite_parameter(model)
    if parameter is not None:
        raise NonFiniteWeightsError(parameter, manifest.steps)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    with quiet_transformers():
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    write_json(tmp / MODEL_MANIFEST, manifest.json_object())
    return publish_directory(tmp, target)
