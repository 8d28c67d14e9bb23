"""A training run for the distributed tests: ``python distributed_run.py BASE CORPUS OUT CACHE HPARAMS_JSON``,
alone or under ``python -m torch.distributed.run --nproc_per_node N`` (the engine then sets up the process
group itself). Exits 0 when the run completed."""

from __future__ import annotations

import json
import sys

from worker.pretraining.engine import run_pretraining


def main(argv: list[str]) -> int:
    base, corpus, out, cache, hyperparameters = argv
    result = run_pretraining(
        base, corpus, out, json.loads(hyperparameters), cache_dir=cache, dataloader_workers=0
    )
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
