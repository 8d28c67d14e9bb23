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

Under torchrun (``WORLD_SIZE`` > 1, one process a device): the process group is set up here (NCCL on
GPUs, gloo on the CPU); process 0 prepares the data and looks for the resume point first, the others then
find them in the cache; every process trains on its slice of each global batch (see
:mod:`worker.pretraining.trainer`); only process 0 has the sinks, writes the metrics files, the
checkpoints' shared parts, the model and ``result.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import torch

from worker.pretraining.base_model import LoadedBase, load_base_model, non_finite_parameter
from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.corpus import iter_documents
from worker.pretraining.hyperparameters import HyperparameterError, Hyperparameters, load_hyperparameters
from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST, RunLayout
from worker.pretraining.masking import MaskingConfig, TokenMasker
from worker.pretraining.model_files import segment_types_error, sequence_length_error, weight_files
from worker.pretraining.prepare import (
    PreparationError,
    PreparedData,
    file_sha256,
    prepare_corpus,
    prepare_eval_corpus,
)
from worker.pretraining.records import (
    LogLine,
    ModelManifest,
    ModelShape,
    ReplaySummary,
    RunWarning,
    SelectedCheckpoint,
    TrainingFailed,
    TrainingFinished,
    TrainingOutcome,
    TrainingResult,
    TrainingStarted,
    TrainingStatus,
    VocabularyExtension,
)
from worker.pretraining.replay import ReplayMixture
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
from worker.pretraining.selection import SelectionRules, choose_checkpoint, selection_warnings
from worker.pretraining.sinks import JsonlSink, RecordSink, TensorBoardSink, combine_sinks
from worker.pretraining.tokenizer import quiet_transformers
from worker.pretraining.trainer import (
    NonFiniteWeightsError,
    PretrainingTrainer,
    RunState,
    StopCheck,
    TrainingError,
    device_name,
    steps_per_epoch,
    total_steps,
    training_arguments,
)
from worker.pretraining.vocabulary import VocabularyError, add_domain_vocabulary

__all__ = [
    "MANIFEST_FORMAT",
    "default_dataloader_workers",
    "export_model",
    "resolve_compile",
    "resolve_precision",
    "run_pretraining",
]

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


def resolve_compile(torch_compile: bool | str, *, cuda: bool | None = None) -> bool:
    """Whether the loss is compiled (``PretrainingTrainer(compile_loss=...)``). auto: on a GPU, where
    compiling paid in issue 13's measurement (bertpt compiled trained 1.23x the tokens/s of bertpt eager on
    an H200; ``bench/train.py --device cuda`` measures it again); eager on the CPU, where runs are short (the
    tests, the demo, trials) and a cold compilation long (docs/benchmarks.md, "GPU speed": 27 s for a
    2-layer model on 2 cores before its first step). Compiled steps were faster on the CPU too in that
    measurement: ``true`` pays for a long CPU run."""
    if torch_compile == "auto":
        return torch.cuda.is_available() if cuda is None else cuda
    return bool(torch_compile)


def run_pretraining(
    base: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    hyperparameters: Hyperparameters | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    eval_corpus: str | os.PathLike[str] | None = None,
    reference_corpus: str | os.PathLike[str] | None = None,
    replay_corpus: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    sink: RecordSink | None = None,
    should_stop: StopCheck | None = None,
    resume: bool = True,
    dataloader_workers: int | None = None,
) -> TrainingResult:
    """Continue pre-training ``base`` on ``corpus``; write everything under ``out_dir``.

    ``hyperparameters``: a Hyperparameters, a dict or a run-config path. ``eval_corpus``: held-out
    domain text (else ``eval_fraction`` of the corpus documents). ``reference_corpus``: general-domain
    text evaluated alongside, to watch forgetting. ``replay_corpus``: general-domain text of which
    ``replay_ratio`` of every epoch's training instances are drawn, against forgetting (prepared with the
    same settings; when it is also the reference corpus, its held-out part is the reference evaluation and
    only the rest is replayed). ``cache_dir``: prepared-data cache (default
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
    rank, processes, owned = _process_group()
    if rank != 0:  # records, metrics files and outputs: process 0's
        sink = None
    try:
        result = _run(
            base,
            corpus,
            out_dir,
            hyperparameters,
            attempt_started=attempt_started,
            rank=rank,
            processes=processes,
            eval_corpus=eval_corpus,
            reference_corpus=reference_corpus,
            replay_corpus=replay_corpus,
            cache_dir=cache_dir,
            sink=sink,
            should_stop=should_stop,
            resume=resume,
            dataloader_workers=dataloader_workers,
        )
        if owned:
            # Process 0 exports the model after the others are done: a process that tore its gloo group
            # down and exited while another still held their connection aborted ("terminate called
            # without an active exception", seen on CI). Every process leaves together (on success only:
            # a process that raised must not wait in a collective the others never enter).
            torch.distributed.barrier()
        return result
    finally:
        if owned and torch.distributed.is_initialized():
            import gc

            gc.collect()  # the DDP wrapper of the finished trainer (its reducer uses the group) goes first
            torch.distributed.destroy_process_group()


def _process_group() -> tuple[int, int, bool]:
    """This process's rank, the number of processes and whether the process group was created here (and
    is to be destroyed at the end): under torchrun (``WORLD_SIZE`` > 1) the process group is initialized
    here if the caller has not, NCCL with this process's GPU (``LOCAL_RANK``) or gloo on the CPU;
    (0, 1, False) otherwise."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes <= 1:
        return 0, 1, False
    owned = not torch.distributed.is_initialized()
    if owned:
        from datetime import timedelta

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Long: process 0 prepares the data alone while the others wait in a barrier.
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=6))
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), owned


@contextmanager
def _process_zero_first(rank: int, processes: int) -> Iterator[None]:
    """Process 0 runs the block first (it prepares the data, looks for the resume point and cleans up
    incomplete checkpoints), the other processes after it, whether it returned or raised."""
    if processes > 1 and rank != 0:
        torch.distributed.barrier()
    try:
        yield
    finally:
        if processes > 1 and rank == 0:
            torch.distributed.barrier()


def _run(
    base: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    hyperparameters: Hyperparameters | Mapping[str, Any] | str | os.PathLike[str] | None,
    *,
    attempt_started: float,
    rank: int,
    processes: int,
    eval_corpus: str | os.PathLike[str] | None,
    reference_corpus: str | os.PathLike[str] | None,
    replay_corpus: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    sink: RecordSink | None,
    should_stop: StopCheck | None,
    resume: bool,
    dataloader_workers: int | None,
) -> TrainingResult:
    """:func:`run_pretraining` in this process (``rank`` of ``processes``)."""
    h = _hyperparameters(hyperparameters)
    replay_error = h.replay_corpus_error(has_replay_corpus=replay_corpus is not None)
    if replay_error is not None:
        raise HyperparameterError([replay_error])
    h.check_reference_corpus(reference_corpus is not None)  # a forgetting budget needs one
    layout = RunLayout(Path(out_dir))
    cache = Path(cache_dir) if cache_dir is not None else layout.root.absolute().parent / ".bertpt-cache"
    say = _say(sink)
    cuda = torch.cuda.is_available()
    precision = resolve_precision(h.precision, cuda=cuda)
    with _process_zero_first(rank, processes):  # the others then find the data in the cache
        loaded = _load_base(base, h, say)
        loaded, vocabulary = _add_domain_vocabulary(h, loaded, corpus, say)  # before any data is tokenized
        replay_sha256 = file_sha256(Path(replay_corpus)) if replay_corpus is not None else None
        # The same text as replay and as reference: its held-out part is the reference evaluation.
        shared = reference_corpus is not None and replay_sha256 == file_sha256(Path(reference_corpus))
        data, reference = _prepare_data(
            h, loaded, corpus, eval_corpus, None if shared else reference_corpus, cache, say
        )
        h.check_eval_split(data.eval is not None)  # select_checkpoint=best, early stopping
        domain = data.train
        replay: _Replay | None = None
        if replay_corpus is not None and replay_sha256 is not None:
            replay = _prepare_replay(
                h, loaded, replay_corpus, replay_sha256, len(domain), cache, say, for_reference=shared
            )
            if replay.held_out_for_reference:
                reference = replay.data
        run_info = _run_info(h, loaded, data, reference, replay)
        warnings = _warnings(loaded, data, reference, say, replay)
        finished = _finished_run(layout, run_info, resume)
        if finished is not None:
            say(f"{layout.model} already holds this run's final model")
            return finished
        start = _resume_point(layout, run_info, resume)
    train = (
        domain
        if replay is None
        else ReplayMixture(domain, replay.pool, replay_per_epoch=replay.per_epoch, seed=h.seed)
    )
    max_steps = total_steps(h, len(train))
    if start.checkpoint is not None:
        say(f"resuming from {start.checkpoint} (step {start.step} of {max_steps})")

    device = "cuda" if cuda else "cpu"
    layout.root.mkdir(parents=True, exist_ok=True)
    tensorboard = (
        TensorBoardSink(layout.tensorboard, purge_step=start.step + 1 if start.checkpoint else None)
        if rank == 0
        else None
    )
    replay_summary = replay.summary(h.replay_ratio) if replay is not None else None
    emit = combine_sinks(JsonlSink(layout.metrics), tensorboard, sink) if rank == 0 else combine_sinks()
    try:
        trainer = _build_trainer(
            h,
            layout,
            loaded,
            data,
            reference,
            start,
            train=train,
            max_steps=max_steps,
            precision=precision,
            cuda=cuda,
            sink=emit,
            should_stop=should_stop,
            deadline=attempt_started + h.max_runtime_seconds if h.max_runtime_seconds else None,
            dataloader_workers=(
                default_dataloader_workers(cuda) if dataloader_workers is None else dataloader_workers
            ),
            run_info=run_info,
            processes=processes,
        )
        emit(
            TrainingStarted(
                step=start.step,
                max_steps=max_steps,
                resumed_from_step=start.step if start.checkpoint else None,
                train_instances=len(train),
                replay_instances=replay.per_epoch if replay is not None else 0,
                eval_splits={name: len(split) for name, split in trainer.eval_splits.items()},
                precision=precision,
                device=device,
                device_name=device_name(torch.device(device)),
                data=data.summary().model_copy(update={"replay": replay_summary}),
                warnings=warnings,
                vocabulary=vocabulary,
                model=ModelShape.from_config(loaded.config.to_dict()),
            )
        )
        of_them = f", {replay.per_epoch} of them replayed" if replay is not None else ""
        say(
            f"training {max_steps} steps on {len(train)} instances per epoch{of_them} ({precision}, {device})"
        )
        try:
            result = _train_and_export(
                trainer,
                layout,
                run_info,
                loaded,
                data.key,
                warnings,
                precision,
                start,
                say,
                replay=replay_summary,
                vocabulary=vocabulary,
                writes=rank == 0,
            )
        except BaseException as exc:
            step = getattr(exc, "step", trainer.state.global_step)  # where a NaN was met, if that is why
            emit(TrainingFailed(step=step, error=f"{type(exc).__name__}: {exc}"))
            raise
        emit(TrainingFinished(step=result.steps, status=result.status, model_path=result.model_path))
        return result
    finally:
        if tensorboard is not None:
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


def _add_domain_vocabulary(
    h: Hyperparameters, loaded: LoadedBase, corpus: str | os.PathLike[str], say: Any
) -> tuple[LoadedBase, VocabularyExtension | None]:
    """``add_domain_tokens``: the corpus's most frequent words that the tokenizer cuts into pieces, made
    tokens of the model (changed in place) and of the tokenizer that everything after uses: the data
    preparation (its cache key follows the vocabulary), the checkpoints and the exported model. The same
    inputs give the same words, so a resumed attempt rebuilds the same tokenizer (see
    :mod:`worker.pretraining.vocabulary`). Counted over the whole corpus file: the held-out documents are
    chosen later, by the preparation with this tokenizer, so their eval loss is measured on text that helped
    choose the words (a leak, stated in README's "Domain vocabulary"; an eval corpus has none). Raises
    HyperparameterError for a tokenizer that is not WordPiece."""
    if not h.add_domain_tokens:
        return loaded, None
    say(f"counting the words of {corpus} (add_domain_tokens={h.add_domain_tokens})")
    sentences = chain.from_iterable(iter_documents(Path(corpus)))
    try:
        tokenizer, extension = add_domain_vocabulary(
            loaded.model,
            loaded.tokenizer,
            sentences,
            limit=h.add_domain_tokens,
            min_count=h.domain_token_min_count,
        )
    except VocabularyError as exc:
        raise HyperparameterError([("add_domain_tokens", str(exc))]) from exc
    say(extension.summary())
    return replace(loaded, tokenizer=tokenizer), extension


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


# The sources of a replay corpus's warnings, as a run names them (see RunWarning.source).
_REPLAY_SOURCES = {"corpus": "replay_corpus", "train": "replay", "eval": "reference"}


@dataclass(frozen=True)
class _Replay:
    """The replay corpus prepared like the corpus: its training split (``pool``) is what the epochs draw
    ``per_epoch`` instances from; when it is also the reference corpus (``held_out_for_reference``), its
    held-out split is the reference evaluation."""

    data: PreparedData
    pool: Any  # data.train, read once
    per_epoch: int
    domain_per_epoch: int
    held_out_for_reference: bool

    @property
    def warnings(self) -> list[RunWarning]:
        """The replay corpus's warnings, naming it and its splits in the run's terms."""
        return [
            w.model_copy(update={"source": _REPLAY_SOURCES.get(w.source or "corpus", w.source)})
            for w in self.data.warnings
        ]

    def summary(self, ratio: float) -> ReplaySummary:
        return ReplaySummary(
            ratio=ratio,
            corpus_sha256=self.data.manifest["corpus_sha256"],
            data_key=self.data.key,
            instances=len(self.pool),
            instances_per_epoch=self.per_epoch,
            domain_instances_per_epoch=self.domain_per_epoch,
            held_out_for_reference=self.held_out_for_reference,
        )


def _prepare_replay(
    h: Hyperparameters,
    loaded: LoadedBase,
    replay_corpus: str | os.PathLike[str],
    replay_sha256: str,
    domain_instances: int,
    cache: Path,
    say: Any,
    *,
    for_reference: bool,
) -> _Replay:
    """Prepare the replay corpus with the run's preparation settings. Also the reference corpus
    (``for_reference``): its held-out split (``eval_fraction``, ``eval_documents``) is evaluated and only
    the rest replayed, so no instance is both trained on and used to measure forgetting; otherwise all of
    it is replayed. Raises PreparationError naming the replay corpus."""
    config = h.preparation()
    if not for_reference:
        config = config.model_copy(update={"eval_fraction": 0.0, "eval_documents": None})
    say(f"preparing the replay corpus {replay_corpus}")
    try:
        data = prepare_corpus(
            Path(replay_corpus), loaded.tokenizer, cache, config, corpus_sha256=replay_sha256, log=say
        )
    except PreparationError as exc:
        raise PreparationError(f"the replay corpus: {exc}", exc.field) from exc
    if for_reference and data.eval is None:
        raise PreparationError(
            "the replay corpus is also the reference corpus, but nothing of it is held out for the reference "
            "evaluation (eval_fraction or eval_documents is 0, or the corpus is too small to spare a part), "
            "and no instance may be both replayed and used to measure forgetting: give a separate reference "
            "corpus, or hold out part of this one"
        )
    pool = data.train
    return _Replay(
        data=data,
        pool=pool,
        per_epoch=h.replay_instances(domain_instances),
        domain_per_epoch=domain_instances,
        held_out_for_reference=for_reference,
    )


def _warnings(
    loaded: LoadedBase,
    data: PreparedData,
    reference: PreparedData | None,
    say: Any,
    replay: _Replay | None = None,
) -> list[RunWarning]:
    """Everything the user should know about the inputs, in one list of one shape: the corpora's and the
    preparation's warnings, then the base model's."""
    if reference is not None and replay is not None and reference is replay.data:
        reference = None  # the replay corpus's held-out part: its warnings come with the replay's
    found = [
        *data.warnings,
        *(reference.warnings if reference is not None else []),
        *(replay.warnings if replay is not None else []),
        *loaded.warnings,
    ]
    for warning in found[: len(found) - len(loaded.warnings)]:  # the model's were said when it loaded
        say(f"warning: {warning.message}")
    return found


def _run_info(
    h: Hyperparameters,
    loaded: LoadedBase,
    data: PreparedData,
    reference: PreparedData | None,
    replay: _Replay | None = None,
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
        "replay_corpus_sha256": replay.data.manifest["corpus_sha256"] if replay else None,
        "replay_data_key": replay.data.key if replay else None,
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


def default_dataloader_workers(cuda: bool) -> int:
    """DataLoader worker processes of a run: on a GPU half the cores, at most 4, build the batches beside the
    training loop; on the CPU none (the cores are the training's)."""
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if cuda else 0


def _build_trainer(
    h: Hyperparameters,
    layout: RunLayout[Path],
    loaded: LoadedBase,
    data: PreparedData,
    reference: PreparedData | None,
    start: _Start,
    *,
    train: Any,
    max_steps: int,
    precision: Precision,
    cuda: bool,
    sink: RecordSink,
    should_stop: StopCheck | None,
    deadline: float | None,
    dataloader_workers: int,
    run_info: dict[str, Any],
    processes: int = 1,
) -> PretrainingTrainer:
    tokenizer = loaded.tokenizer
    compile_loss = resolve_compile(h.torch_compile, cuda=cuda)
    fixed_predictions = h.max_predictions_per_seq if compile_loss else None  # a static prediction width
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
    return PretrainingTrainer(
        model=loaded.model,
        args=training_arguments(
            h,
            layout.checkpoints,
            max_steps=max_steps,
            precision=precision,
            cuda=cuda,
            dataloader_workers=dataloader_workers,
            evaluate_at_start=start.checkpoint is None and bool(eval_splits),
            processes=processes,
        ),
        data_collator=collator(masker),
        processing_class=tokenizer,  # saved into every checkpoint: `run:<id>@<step>` loads as a base
        train_dataset=train,  # data.train, or it and the replay corpus's instances (ReplayMixture)
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
        updates_per_epoch=steps_per_epoch(len(train), h.batch_size, h.gradient_accumulation_steps),
        max_nonfinite_steps=h.max_nonfinite_steps,
        selection=SelectionRules.from_hyperparameters(h),
        compile_loss=compile_loss,
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
    *,
    replay: ReplaySummary | None = None,
    vocabulary: VocabularyExtension | None = None,
    writes: bool = True,
) -> TrainingResult:
    """Train (or resume), evaluate at the end if not done yet, export, write result.json (the last two
    only with ``writes``: process 0 of several)."""
    max_steps = trainer.args.max_steps
    stopped_early = start.state is not None and start.state.stopped_early is not None
    if start.checkpoint is not None and (start.step >= max_steps or stopped_early):
        # The last checkpoint is the final step, or early stopping ended the training there (the export
        # did not happen): Trainer would train on, so take the weights and finish.
        trainer._load_from_checkpoint(str(start.checkpoint))
        trainer.state.global_step = start.step
    else:
        trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
    run_state = trainer.run_state
    status: TrainingStatus = trainer.stop_status or "completed"
    step = trainer.state.global_step
    if status != "cancelled" and trainer.eval_splits and run_state.last_eval_step != step:
        trainer.evaluate()
    if run_state.stopped_early is not None:
        say(f"stopped early at step {step} of {max_steps}: {run_state.stopped_early.reason}")
    selected = _select_checkpoint(trainer, layout, step, say) if status != "cancelled" else None
    trainer._take_tokens_seen()
    outcome = TrainingOutcome(
        status=status,
        steps=step,
        max_steps=max_steps,
        baseline_metrics=run_state.baseline,
        final_metrics=run_state.last_eval,
        final_metrics_step=run_state.last_eval_step,
        train_metrics=run_state.last_train,
        warnings=[
            *warnings,
            *_training_warnings(run_state, step),
            *(selection_warnings(selected) if selected is not None else []),
        ],
        runtime_seconds=round(run_state.runtime_seconds + trainer.attempt_seconds(), 3),
        samples_seen=run_state.samples_seen,
        tokens_seen=run_state.tokens_seen,
        skipped_steps=run_state.skipped_steps,
        data_key=data_key,
        replay=replay,
        vocabulary=vocabulary,
        selected_checkpoint=selected,
        stopped_early=run_state.stopped_early,
    ).outcome_fields()
    model_path: Path | None = None
    if status != "cancelled" and writes:
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
    if writes:
        write_json(layout.result, result.json_object())
    return result


def _select_checkpoint(
    trainer: PretrainingTrainer, layout: RunLayout[Path], step: int, say: Any
) -> SelectedCheckpoint:
    """Choose the step to export (:func:`~worker.pretraining.selection.choose_checkpoint`) and put its
    weights into the trainer's model: those in memory for the last step, else its kept checkpoint's.

    Raises TrainingError when the selected step's checkpoint is not there (it is never rotated away).
    """
    rules = trainer.selection
    chosen = choose_checkpoint(trainer.run_state.evaluated_steps(), rules, step)
    if chosen is None:  # select_checkpoint=best and nothing evaluated after step 0 (the run trained 0 steps)
        chosen = SelectedCheckpoint(
            step=step, select_checkpoint=rules.select_checkpoint, reason="the last step: no evaluated step"
        )
    if chosen.step != step:
        checkpoint = layout.checkpoint(chosen.step)
        if not (checkpoint / CHECKPOINT_MANIFEST).is_file():
            raise TrainingError(
                f"the selected step {chosen.step} ({chosen.reason}) has no complete checkpoint at "
                f"{checkpoint}"
            )
        trainer._load_from_checkpoint(str(checkpoint))
    say(f"exporting the weights of step {chosen.step}: {chosen.reason}")
    return chosen


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
