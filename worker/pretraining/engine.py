"""The training loop: transformers' ``Trainer`` with the pre-training loss, evaluations, metric records,
atomic checkpoints, cooperative cancellation and the final export.

``run_pretraining`` is the one entry point (the CLI and the service worker both call it). It loads the
base checkpoint, prepares (or finds cached) instances, resumes from the newest complete checkpoint of
the same run if there is one, trains, evaluates at step 0 (the baseline), every ``eval_every_steps`` and
at the end, and writes the final model as a Hugging Face directory with a manifest.

What the stock ``Trainer`` provides and is used as is: AdamW with weight decay off for biases and
LayerNorms, the linear warmup/decay schedule, gradient accumulation and clipping, mixed precision through
accelerate (autocast + grad scaler), and checkpoint contents (model, optimizer, scheduler, scaler, RNG
states, trainer state) with the resume logic around them (restore, skip the batches already seen).
What :class:`PretrainingTrainer` changes: the loss (MLM head at the predicted positions only,
token-weighted over a whole accumulated step), the sampler (length-grouped, reproducible per
(seed, epoch)), the evaluation (whole eval splits with fixed masks, no predictions kept), the logs (the
run's metrics to a sink) and checkpoint publication (temporary directory + rename, rotation by step).
Single device: the loss calls the model's submodules directly, so DDP/FSDP wrappers are not supported.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback

from worker.pretraining.checkpoints import (
    CHECKPOINT_MANIFEST,
    MODEL_MANIFEST,
    TRAINER_STATE,
    ResumeError,
    latest_checkpoint,
    publish_directory,
    read_json,
    remove_incomplete,
    resume_mismatches,
    rotate_checkpoints,
    temporary_sibling,
    write_json,
)
from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.hyperparameters import Hyperparameters, load_hyperparameters
from worker.pretraining.masking import MaskingConfig, TokenMasker
from worker.pretraining.metrics import JsonlSink, LossTotals, MetricsSink, TensorBoardSink, combine_sinks
from worker.pretraining.model import (
    IGNORE_INDEX,
    LoadedBase,
    load_base_model,
    pretraining_loss,
    quiet_transformers,
    weight_files,
)
from worker.pretraining.prepare import PreparedData, file_sha256, prepare_corpus, prepare_eval_corpus

__all__ = [
    "LengthGroupedSampler",
    "PretrainingTrainer",
    "RunLayout",
    "RunState",
    "TrainingError",
    "TrainingResult",
    "resolve_precision",
    "run_pretraining",
    "steps_per_epoch",
    "training_arguments",
]

logger = logging.getLogger(__name__)

Status = Literal["completed", "cancelled", "timed_out"]
StopCheck = Callable[[], bool]
Progress = Callable[[int, int], None]
Log = Callable[[str], None]

MANIFEST_FORMAT = 1
_clock = time.monotonic  # the wall clock of max_runtime_seconds (tests replace it)


class TrainingError(RuntimeError):
    """The run cannot start or continue as asked (bad combination of data, model and parameters)."""


# --------------------------------------------------------------------------------------------------
# Small pieces


def resolve_precision(precision: str, *, cuda: bool | None = None) -> Literal["fp32", "bf16", "fp16"]:
    """auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on the CPU."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise TrainingError("precision: fp16 mixed precision needs a GPU; use fp32 or bf16 on the CPU")
    if precision not in ("fp32", "bf16", "fp16"):
        raise TrainingError(f"precision: unknown value {precision!r}")
    return precision  # type: ignore[return-value]


def steps_per_epoch(num_instances: int, batch_size: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in one pass, counted like Trainer (a short last accumulation still steps)."""
    batches = math.ceil(num_instances / batch_size)
    return max(1, math.ceil(batches / gradient_accumulation_steps))


def total_steps(h: Hyperparameters, num_instances: int) -> int:
    if h.max_steps is not None:
        return h.max_steps
    per_epoch = steps_per_epoch(num_instances, h.batch_size, h.gradient_accumulation_steps)
    return max(1, math.ceil(h.epochs * per_epoch))


class LengthGroupedSampler(Sampler[int]):
    """Shuffled batches of similar lengths, so dynamic padding pads little.

    Indices are shuffled, cut into mega-batches of ``megabatch_factor`` batches, sorted by length inside
    each mega-batch and cut into batches; the full batches are then shuffled (the one short batch, if
    any, stays last so batches stay aligned with the DataLoader's). The order depends only on
    (seed, epoch): a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, *, seed: int, megabatch_factor: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.megabatch = self.batch_size * int(megabatch_factor)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, 0x1E57])
        order = rng.permutation(len(self.lengths))
        full: list[np.ndarray] = []
        short: list[np.ndarray] = []
        for start in range(0, len(order), self.megabatch):
            chunk = order[start : start + self.megabatch]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            for b in range(0, len(chunk), self.batch_size):
                batch = chunk[b : b + self.batch_size]
                (full if len(batch) == self.batch_size else short).append(batch)
        return [full[i] for i in rng.permutation(len(full))] + short

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from (int(i) for i in batch)


def _eval_order(dataset: Any) -> list[int]:
    """Longest first: eval batches of similar lengths (order does not matter for sums)."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        return list(range(len(dataset)))
    return np.argsort(-np.asarray(lengths), kind="stable").tolist()


@dataclass
class RunState:
    """What a run carries across checkpoints besides Trainer's own state."""

    samples_seen: int = 0
    tokens_seen: int = 0
    runtime_seconds: float = 0.0  # training time of earlier attempts
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)
    last_eval: dict[str, dict[str, float]] = field(default_factory=dict)
    last_eval_step: int | None = None
    last_train: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> RunState:
        state = manifest.get("state") or {}
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in state.items() if k in known})


# --------------------------------------------------------------------------------------------------
# The Trainer


class _FlowCallback(TrainerCallback):
    """Decides evaluation, checkpoints and stopping at the end of every optimizer step, and keeps the
    collator's epoch in step with the training loop."""

    def __init__(self, trainer: PretrainingTrainer):
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._on_train_begin()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        collator = self.trainer.data_collator
        if hasattr(collator, "epoch"):
            collator.epoch = math.floor(state.epoch or 0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self.trainer._on_step_end(state, control)


class PretrainingTrainer(Trainer):
    """``Trainer`` for BERT pre-training batches (see the module docstring for what it changes).

    Extra arguments: ``nsp`` (train and report the NSP head), ``eval_splits`` (name -> dataset, e.g.
    ``{"eval": ..., "reference": ...}``) with their ``eval_collator`` (static masks), ``sink`` for the
    records, ``should_stop`` (polled every step), ``deadline`` (a ``_clock()`` time to stop at),
    ``progress(step, max_steps)``, ``eval_every_steps`` / ``checkpoint_every_steps`` /
    ``keep_checkpoints``, ``run_info`` (written into every checkpoint manifest) and ``run_state``.
    """

    # compute_loss normalizes by the predicted tokens / sequences of the whole accumulated step.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        nsp: bool = True,
        eval_splits: Mapping[str, Dataset] | None = None,
        eval_collator: Callable[..., Any] | None = None,
        sink: MetricsSink | None = None,
        should_stop: StopCheck | None = None,
        deadline: float | None = None,
        progress: Progress | None = None,
        eval_every_steps: int = 0,
        checkpoint_every_steps: int = 0,
        keep_checkpoints: int = 2,
        run_info: Mapping[str, Any] | None = None,
        run_state: RunState | None = None,
        updates_per_epoch: int | None = None,
        **kwargs: Any,
    ):
        self.nsp = nsp
        self.eval_splits = dict(eval_splits or {})
        self.eval_collator = eval_collator
        self.sink = sink
        self.should_stop = should_stop
        self.deadline = deadline
        self.progress = progress
        self.eval_every_steps = eval_every_steps
        self.checkpoint_every_steps = checkpoint_every_steps
        self.keep_checkpoints = keep_checkpoints
        self.run_info = dict(run_info or {})
        self.run_state = run_state or RunState()
        self.updates_per_epoch = updates_per_epoch
        self.stop_status: Status | None = None
        self.last_checkpoint: Path | None = None
        self._attempt_started = time.perf_counter()
        self._window = LossTotals()
        self._window_started = time.perf_counter()
        self._paused = 0.0
        self._tokens_seen: torch.Tensor | None = None
        self._normalizers: tuple[Any, Any] = (None, None)
        super().__init__(*args, **kwargs)
        for noisy in (PrinterCallback, ProgressCallback):
            self.remove_callback(noisy)
        self.add_callback(_FlowCallback(self))

    # ---- records

    def emit(self, record: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink(record)

    def emit_event(self, event: str, **details: Any) -> None:
        self.emit({"type": "event", "event": event, "step": self.state.global_step, **details})

    # ---- data

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(lengths, self._train_batch_size, seed=seed)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], None]:
        """Fetch the micro-batches of one optimizer step and count their predicted tokens and
        sequences (kept on the device: no sync), the normalizers of the step's loss."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if batches:
            mlm = sum((b["masked_lm_labels"] != IGNORE_INDEX).sum() for b in batches)
            sequences = sum(int(b["next_sentence_label"].shape[0]) for b in batches)
            self._normalizers = (mlm.to(self.args.device).clamp(min=1), max(sequences, 1))
        return batches, None

    # ---- loss

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
        # The loss calls the model's submodules, not the forward accelerate wrapped in autocast.
        return self.accelerator.autocast()

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        core = self.accelerator.unwrap_model(model)
        training = core.training
        mlm_norm, nsp_norm = self._normalizers if training else (None, None)
        out = pretraining_loss(core, inputs, nsp=self.nsp, mlm_normalizer=mlm_norm, nsp_normalizer=nsp_norm)
        if training:
            tokens = inputs["attention_mask"].sum()
            self._window.add(out, tokens=tokens, samples=int(inputs["input_ids"].shape[0]))
            self._tokens_seen = tokens if self._tokens_seen is None else self._tokens_seen + tokens
            self.run_state.samples_seen += int(inputs["input_ids"].shape[0])
        return (out.loss, out) if return_outputs else out.loss

    def _take_tokens_seen(self) -> int:
        if self._tokens_seen is not None:
            self.run_state.tokens_seen += int(self._tokens_seen.item())
            self._tokens_seen = None
        return self.run_state.tokens_seen

    # ---- flow

    def _on_train_begin(self) -> None:
        self._window.reset()
        self._window_started = time.perf_counter()
        self._paused = 0.0
        if self.progress is not None:
            self.progress(self.state.global_step, self.state.max_steps)

    def _on_step_end(self, state: Any, control: Any) -> Any:
        step = state.global_step
        final = step >= state.max_steps
        if self.progress is not None:
            self.progress(step, state.max_steps)
        if self.eval_splits and (final or (self.eval_every_steps and step % self.eval_every_steps == 0)):
            control.should_evaluate = True
        if final or (self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0):
            control.should_save = True
        if final:
            control.should_log = True
            return control
        reason: Status | None = None
        if self.should_stop is not None and self.should_stop():
            reason = "cancelled"
        elif self.deadline is not None and _clock() >= self.deadline:
            reason = "timed_out"
        if reason is not None:
            self.stop_status = reason
            control.should_training_stop = True
            control.should_save = True
            control.should_log = True
            control.should_evaluate = False
        return control

    # ---- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "learning_rate" in logs:  # a training log of _maybe_log_save_evaluate
            metrics = self._train_metrics(logs)
            self.run_state.last_train = metrics
            self.emit(
                {"type": "metrics", "split": "train", "step": self.state.global_step, "metrics": metrics}
            )
            logs.update({k: v for k, v in metrics.items() if k not in logs and k != "step"})
        super().log(logs, start_time)

    def _train_metrics(self, logs: Mapping[str, float]) -> dict[str, Any]:
        now = time.perf_counter()
        elapsed = max(now - self._window_started - self._paused, 1e-9)
        tokens = self._window.values().get("tokens", 0.0)
        window = self._window.train_metrics()
        self._window.reset()
        self._window_started, self._paused = now, 0.0
        grad_norm = logs.get("grad_norm")
        metrics: dict[str, Any] = {
            "loss": float(logs["loss"]),
            **window,
            "learning_rate": float(logs["learning_rate"]),
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "tokens_per_second": tokens / elapsed,
            "samples_seen": self.run_state.samples_seen,
            "epoch": float(self.state.epoch or 0.0),
            "step": self.state.global_step,
        }
        return metrics

    # ---- evaluation

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluate every eval split; returns ``{<split>_<metric>: value}`` and emits one record per split."""
        started = time.perf_counter()
        step = self.state.global_step
        splits = self.eval_splits if eval_dataset is None else {metric_key_prefix: eval_dataset}
        results: dict[str, dict[str, float]] = {}
        for name, dataset in splits.items():
            metrics = self.evaluate_split(dataset)
            if metrics is None:  # cancelled while evaluating
                break
            results[name] = metrics
            self.emit({"type": "metrics", "split": name, "step": step, "metrics": metrics})
        if results and eval_dataset is None:
            self.run_state.last_eval = results
            self.run_state.last_eval_step = step
            if not self.run_state.baseline and step == 0:
                self.run_state.baseline = results
        flat = {f"{name}_{key}": value for name, metrics in results.items() for key, value in metrics.items()}
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, flat)
        self._paused += time.perf_counter() - started
        return flat

    def evaluate_split(self, dataset: Any) -> dict[str, float] | None:
        """Token-weighted MLM and NSP metrics over a whole split (None if cancelled meanwhile)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        loader = DataLoader(
            dataset,
            batch_size=self.args.eval_batch_size,
            sampler=_eval_order(dataset),
            collate_fn=self.eval_collator or self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            # Its own generator: evaluating never moves the global RNG, so it cannot change training.
            generator=torch.Generator().manual_seed(0),
        )
        totals = LossTotals()
        try:
            with torch.no_grad(), self.autocast_smart_context_manager():
                for i, batch in enumerate(loader):
                    if self.should_stop is not None and i % 16 == 15 and self.should_stop():
                        self.stop_status = "cancelled"
                        self.control.should_training_stop = True
                        self.control.should_save = self.state.global_step > 0
                        return None
                    out = pretraining_loss(model, self._prepare_inputs(batch), nsp=self.nsp)
                    totals.add(out)
        finally:
            model.train(was_training)
        return totals.eval_metrics()

    # ---- checkpoints

    def checkpoint_manifest(self) -> dict[str, Any]:
        step = self.state.global_step
        self._take_tokens_seen()
        state = asdict(self.run_state)
        state["runtime_seconds"] = self.run_state.runtime_seconds + self.attempt_seconds()
        per_epoch = self.updates_per_epoch or self.state.max_steps or 1
        return {
            "format": MANIFEST_FORMAT,
            "step": step,
            "max_steps": self.state.max_steps,
            "epoch": self.state.epoch,
            "data_position": {
                "epoch": int(step // per_epoch),
                "optimizer_steps_into_epoch": int(step % per_epoch),
            },
            "run": self.run_info,
            "metrics": {"train": self.run_state.last_train, **self.run_state.last_eval},
            "state": state,
            "created_at": datetime.now(UTC).isoformat(),
        }

    def attempt_seconds(self) -> float:
        return time.perf_counter() - self._attempt_started

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Trainer's checkpoint contents, written into a temporary directory and published by a rename
        once complete (the manifest is written last); then the oldest checkpoints beyond
        ``keep_checkpoints`` are removed."""
        started = time.perf_counter()
        root = Path(str(self.args.output_dir))
        final = root / f"checkpoint-{self.state.global_step}"
        tmp = temporary_sibling(final)
        self.store_flos()
        with quiet_transformers():
            self.save_model(str(tmp), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(tmp))
            self._save_scaler(str(tmp))
            self._save_rng_state(str(tmp))
        saved: dict[str, Any] = self.state.stateful_callbacks  # type: ignore[assignment]  # a dict by then
        for cb in [*self.callback_handler.callbacks, self.control]:
            if isinstance(cb, ExportableState):  # as Trainer._save_checkpoint does
                name = cb.__class__.__name__
                if isinstance(saved.get(name), list):
                    saved[name].append(cb.state())
                else:
                    saved[name] = cb.state()
        self.state.save_to_json(str(tmp / TRAINER_STATE))
        write_json(tmp / CHECKPOINT_MANIFEST, self.checkpoint_manifest())
        publish_directory(tmp, final)
        self.last_checkpoint = final
        rotate_checkpoints(root, self.keep_checkpoints)
        self.emit_event("checkpoint", path=str(final))
        self._paused += time.perf_counter() - started


def training_arguments(
    h: Hyperparameters,
    output_dir: Path,
    *,
    max_steps: int,
    precision: str,
    cuda: bool,
    dataloader_workers: int,
    evaluate_at_start: bool,
) -> TrainingArguments:
    """TrainingArguments for a run: evaluation and saving are driven by PretrainingTrainer's flow
    callback, so Trainer's own strategies are off."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=h.batch_size,
        per_device_eval_batch_size=h.batch_size * 2,
        gradient_accumulation_steps=h.gradient_accumulation_steps,
        learning_rate=h.learning_rate,
        weight_decay=h.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-6,  # BERT's
        max_grad_norm=h.max_grad_norm,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(max_steps * h.warmup_ratio),
        max_steps=max_steps,
        optim="adamw_torch_fused",  # fused kernels on the CPU too (torch >= 2.4)
        seed=h.seed,
        data_seed=h.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        logging_strategy="steps",
        logging_steps=h.logging_every_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,
        eval_strategy="no",
        eval_on_start=evaluate_at_start,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=dataloader_workers,
        dataloader_pin_memory=cuda,
        dataloader_drop_last=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="no",
        log_level="passive",
    )


# --------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class RunLayout:
    """Where a run writes: ``model/`` (the final HF directory), ``checkpoints/``, ``tensorboard/``,
    ``metrics.jsonl`` (every record) and ``result.json``."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.root / "result.json"


@dataclass
class TrainingResult:
    status: Status
    run_dir: Path
    model_path: Path | None
    checkpoint_path: Path | None
    steps: int
    max_steps: int
    baseline_metrics: dict[str, dict[str, float]]
    final_metrics: dict[str, dict[str, float]]
    final_metrics_step: int | None
    train_metrics: dict[str, float]
    warnings: list[dict[str, Any]]
    runtime_seconds: float
    samples_seen: int
    tokens_seen: int
    data_key: str
    resumed_from: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("run_dir", "model_path", "checkpoint_path", "resumed_from"):
            out[key] = None if out[key] is None else str(out[key])
        return out


def _check_against_model(h: Hyperparameters, loaded: LoadedBase) -> None:
    config = loaded.config
    if h.max_seq_length > config.max_position_embeddings:
        raise TrainingError(
            f"max_seq_length: {h.max_seq_length} is more than the model's {config.max_position_embeddings} "
            "position embeddings"
        )
    if h.nsp and config.type_vocab_size < 2:
        raise TrainingError("nsp: the model has a single token type, so it cannot tell segment A from B")


def _versions() -> dict[str, str]:
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _run_info(
    h: Hyperparameters,
    loaded: LoadedBase,
    data: PreparedData,
    reference: PreparedData | None,
) -> dict[str, Any]:
    digests = [file_sha256(p) for p in weight_files(loaded.path)]
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


def _result_from_manifest(layout: RunLayout, manifest: Mapping[str, Any]) -> TrainingResult:
    return TrainingResult(
        status=manifest["status"],
        run_dir=layout.root,
        model_path=layout.model,
        checkpoint_path=latest_checkpoint(layout.checkpoints),
        steps=int(manifest["steps"]),
        max_steps=int(manifest["max_steps"]),
        baseline_metrics=manifest.get("baseline_metrics") or {},
        final_metrics=manifest.get("final_metrics") or {},
        final_metrics_step=manifest.get("final_metrics_step"),
        train_metrics=manifest.get("train_metrics") or {},
        warnings=manifest.get("warnings") or [],
        runtime_seconds=float(manifest.get("runtime_seconds") or 0.0),
        samples_seen=int(manifest.get("samples_seen") or 0),
        tokens_seen=int(manifest.get("tokens_seen") or 0),
        data_key=manifest["run"]["data_key"],
    )


def export_model(model: Any, tokenizer: Any, target: Path, manifest: Mapping[str, Any]) -> Path:
    """The final model as a Hugging Face directory (safetensors, config with
    ``architectures: ["BertForPreTraining"]``, tokenizer, ``bertpt_manifest.json``), published
    atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    with quiet_transformers():
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    write_json(tmp / MODEL_MANIFEST, dict(manifest))
    return publish_directory(tmp, target)


def _default_workers(cuda: bool) -> int:
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if cuda else 0


def _train_and_finish(
    trainer: PretrainingTrainer,
    h: Hyperparameters,
    layout: RunLayout,
    run_info: dict[str, Any],
    loaded: LoadedBase,
    data_key: str,
    precision: str,
    resume_from: Path | None,
    resumed_step: int,
    say: Log,
) -> TrainingResult:
    """Train (or resume), evaluate at the end if not done yet, export, write result.json."""
    max_steps = trainer.args.max_steps
    if resume_from is not None and resumed_step >= max_steps:
        # The last checkpoint is the final step (the export did not happen): Trainer would train one
        # step too many on resume, so take the weights and finish.
        trainer._load_from_checkpoint(str(resume_from))
        trainer.state.global_step = resumed_step
    else:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    run_state = trainer.run_state
    status: Status = trainer.stop_status or "completed"
    step = trainer.state.global_step
    if status != "cancelled" and trainer.eval_splits and run_state.last_eval_step != step:
        trainer.evaluate()
    runtime = run_state.runtime_seconds + trainer.attempt_seconds()
    trainer._take_tokens_seen()
    model_path: Path | None = None
    if status != "cancelled":
        manifest = {
            "format": MANIFEST_FORMAT,
            "status": status,
            "run": run_info,
            "hyperparameters": run_info["hyperparameters"],
            "corpus_sha256": run_info["corpus_sha256"],
            "data_key": data_key,
            "base_model": loaded.source,
            "warnings": loaded.warnings,
            "baseline_metrics": run_state.baseline,
            "final_metrics": run_state.last_eval,
            "final_metrics_step": run_state.last_eval_step,
            "train_metrics": run_state.last_train,
            "steps": step,
            "max_steps": max_steps,
            "samples_seen": run_state.samples_seen,
            "tokens_seen": run_state.tokens_seen,
            "runtime_seconds": round(runtime, 3),
            "precision": precision,
            "versions": _versions(),
            "created_at": datetime.now(UTC).isoformat(),
        }
        say(f"writing the model to {layout.model}")
        model_path = export_model(
            trainer.accelerator.unwrap_model(trainer.model), loaded.tokenizer, layout.model, manifest
        )
    result = TrainingResult(
        status=status,
        run_dir=layout.root,
        model_path=model_path,
        checkpoint_path=latest_checkpoint(layout.checkpoints),
        steps=step,
        max_steps=max_steps,
        baseline_metrics=run_state.baseline,
        final_metrics=run_state.last_eval,
        final_metrics_step=run_state.last_eval_step,
        train_metrics=run_state.last_train,
        warnings=loaded.warnings,
        runtime_seconds=runtime,
        samples_seen=run_state.samples_seen,
        tokens_seen=run_state.tokens_seen,
        data_key=data_key,
        resumed_from=resume_from,
    )
    write_json(layout.result, result.to_dict())
    return result


def run_pretraining(
    base: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    hyperparameters: Hyperparameters | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    eval_corpus: str | os.PathLike[str] | None = None,
    reference_corpus: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    sink: MetricsSink | None = None,
    should_stop: StopCheck | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    log: Log | None = None,
    dataloader_workers: int | None = None,
) -> TrainingResult:
    """Continue pre-training ``base`` on ``corpus``; write everything under ``out_dir``.

    ``hyperparameters``: a Hyperparameters, a dict or a run-config path. ``eval_corpus``: held-out
    domain text (else ``eval_fraction`` of the corpus documents). ``reference_corpus``: general-domain
    text evaluated alongside, to watch forgetting. ``cache_dir``: prepared-data cache (default
    ``<out_dir>/../.bertpt-cache``). ``sink(record)`` receives metric and event records,
    ``progress(step, max_steps)`` every step, ``log(message)`` human-readable lines.
    ``should_stop()`` is polled every step: when true, a checkpoint is written and the run ends
    "cancelled". ``max_runtime_seconds`` ends it "timed_out" the same way, but evaluated and exported.
    With ``resume`` (the default), a run interrupted in ``out_dir`` continues from its newest complete
    checkpoint if it is the same run (same base weights, corpus, data and hyperparameters; otherwise
    ResumeError), and a run already completed there is returned as is.
    Raises BaseModelError, HyperparameterError, PreparationError / CorpusFormatError, ResumeError or
    TrainingError for what cannot run.
    """
    attempt_started = _clock()
    say: Log = log or logger.info
    if isinstance(hyperparameters, Hyperparameters):
        h = hyperparameters
    elif hyperparameters is None or isinstance(hyperparameters, Mapping):
        h = load_hyperparameters(dict(hyperparameters or {}))
    else:
        h = load_hyperparameters(Path(hyperparameters))
    layout = RunLayout(Path(out_dir))
    cache = Path(cache_dir) if cache_dir is not None else layout.root.absolute().parent / ".bertpt-cache"
    cuda = torch.cuda.is_available()
    precision = resolve_precision(h.precision, cuda=cuda)

    from transformers import set_seed

    set_seed(h.seed)  # heads missing from the checkpoint are initialized reproducibly
    say(f"loading the base model {base}")
    loaded = load_base_model(base)
    for warning in loaded.warnings:
        say(f"warning: {warning['message']}")
    _check_against_model(h, loaded)
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
    run_info = _run_info(h, loaded, data, reference)
    num_train = len(data.train)
    max_steps = total_steps(h, num_train)

    # ---- an earlier attempt in the same directory?
    finished = read_json(layout.model / MODEL_MANIFEST)
    remove_incomplete(layout.checkpoints)
    latest = latest_checkpoint(layout.checkpoints)
    if (finished is not None or latest is not None) and not resume:
        raise TrainingError(
            f"{layout.root} already holds a run (checkpoints or a model); resume it or use another directory"
        )
    if finished is not None and finished.get("status") == "completed":
        problems = resume_mismatches({"run": finished.get("run")}, run_info)
        if problems:
            raise ResumeError(layout.root, problems)
        say(f"{layout.model} already holds this run's final model")
        return _result_from_manifest(layout, finished)
    run_state = RunState()
    resume_from: Path | None = None
    resumed_step = 0
    if latest is not None:
        manifest = read_json(latest / CHECKPOINT_MANIFEST) or {}
        problems = resume_mismatches(manifest, run_info)
        if problems:
            raise ResumeError(layout.root, problems)
        resume_from, run_state = latest, RunState.from_manifest(manifest)
        resumed_step = int(manifest.get("step", 0))
        say(f"resuming from {latest} (step {resumed_step} of {max_steps})")

    # ---- data and model plumbing
    tokenizer = loaded.tokenizer
    fixed_predictions = h.max_predictions_per_seq if h.torch_compile else None  # static shapes
    masker = (
        TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(h), tokenizer)
        if h.masking == "dynamic"
        else None
    )
    collator = PretrainingCollator(
        pad_token_id=tokenizer.pad_token_id,
        masker=masker,
        seed=h.seed,
        pad_to_multiple_of=8,
        max_predictions_per_seq=fixed_predictions,
    )
    eval_collator = PretrainingCollator(
        pad_token_id=tokenizer.pad_token_id,
        masker=None,
        seed=h.seed,
        pad_to_multiple_of=8,
        max_predictions_per_seq=fixed_predictions,
    )
    eval_splits: dict[str, Any] = {}
    if data.eval is not None:
        eval_splits["eval"] = data.eval
    if reference is not None and reference.eval is not None:
        eval_splits["reference"] = reference.eval
    model = loaded.model
    if h.torch_compile:
        model.bert.compile()
        model.cls.predictions.compile()

    layout.root.mkdir(parents=True, exist_ok=True)
    tensorboard = TensorBoardSink(layout.tensorboard, purge_step=resumed_step + 1 if resume_from else None)
    emit = combine_sinks(JsonlSink(layout.metrics), tensorboard, sink)
    workers = _default_workers(cuda) if dataloader_workers is None else dataloader_workers
    deadline = attempt_started + h.max_runtime_seconds if h.max_runtime_seconds else None
    trainer = PretrainingTrainer(
        model=model,
        args=training_arguments(
            h,
            layout.checkpoints,
            max_steps=max_steps,
            precision=precision,
            cuda=cuda,
            dataloader_workers=workers,
            evaluate_at_start=resume_from is None and bool(eval_splits),
        ),
        data_collator=collator,
        processing_class=tokenizer,  # saved into every checkpoint: `run:<id>@<step>` loads as a base
        train_dataset=data.train,
        nsp=h.nsp,
        eval_splits=eval_splits,
        eval_collator=eval_collator,
        sink=emit,
        should_stop=should_stop,
        deadline=deadline,
        progress=progress,
        eval_every_steps=h.eval_every_steps,
        checkpoint_every_steps=h.checkpoint_every_steps,
        keep_checkpoints=h.keep_checkpoints,
        run_info=run_info,
        run_state=run_state,
        updates_per_epoch=steps_per_epoch(num_train, h.batch_size, h.gradient_accumulation_steps),
    )
    try:
        trainer.emit_event(
            "started",
            max_steps=max_steps,
            resumed_from=str(resume_from) if resume_from else None,
            train_instances=num_train,
            eval_splits={name: len(split) for name, split in eval_splits.items()},
            precision=precision,
            device="cuda" if cuda else "cpu",
            data_key=data.key,
            warnings=loaded.warnings,
        )
        say(f"training {max_steps} steps on {num_train} instances ({precision}, {'cuda' if cuda else 'cpu'})")
        try:
            result = _train_and_finish(
                trainer, h, layout, run_info, loaded, data.key, precision, resume_from, resumed_step, say
            )
        except BaseException as exc:
            trainer.emit_event("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        trainer.emit_event(
            "finished", status=result.status, model_path=str(result.model_path) if result.model_path else None
        )
        return result
    finally:
        tensorboard.close()
