"""``bertpt datasets`` and ``bertpt evaluations`` against a real API (no worker: the evaluation stays queued
until it is cancelled), and ``bertpt models list``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.bertpt.cli.conftest import BertptCli
from tests.e2e.conftest import ApiServer
from tests.support import topic_dataset_tsv


def test_a_dataset_and_an_evaluation_from_upload_to_cancel(
    start_api: Callable[..., ApiServer],
    api_key: str,
    run_cli: BertptCli,
    documents: list[list[str]],
    tmp_path: Path,
) -> None:
    api = start_api()

    def bertpt(*args: str) -> tuple[int, str, str]:
        result = run_cli(*args, api_url=api.base_url, key=api_key)
        return result.exit_code, result.stdout, result.stderr

    dataset_file = tmp_path / "topics.tsv"
    dataset_file.write_bytes(topic_dataset_tsv(documents))
    code, out, err = bertpt("datasets", "upload", str(dataset_file), "--name", "topics")
    assert code == 0, err
    assert "(topics): 60 examples (first 30, second 30)" in out
    code, out, _ = bertpt("datasets", "list", "--json")
    (dataset,) = json.loads(out)["data"]
    code, out, _ = bertpt("datasets", "show", dataset["id"], "--json")
    assert json.loads(out) == dataset

    code, out, _ = bertpt("models", "list", "--json")
    builtin = next(model["id"] for model in json.loads(out)["data"] if model["kind"] == "builtin")

    code, out, err = bertpt(
        "evaluations", "create", "--dataset", dataset["id"], "--model", builtin, "--method", "probe",
        "--seeds", "2", "--probe-max-iter", "50", "--json",
    )  # fmt: skip
    assert code == 0, err
    evaluation = json.loads(out)
    assert (evaluation["status"], evaluation["method"], evaluation["seeds"]) == ("queued", "probe", 2)
    assert evaluation["hyperparameters"]["probe_max_iter"] == 50  # the generated option reached the API

    code, out, _ = bertpt("evaluations", "show", evaluation["id"])
    assert f"evaluation {evaluation['id']}: queued (probe, 2 seeds, dataset {dataset['id']})" in out
    code, out, _ = bertpt("evaluations", "cancel", evaluation["id"])
    assert code == 0 and out == f"evaluation {evaluation['id']}: cancelled\n"
    code, out, _ = bertpt("evaluations", "list", "--json")
    assert [item["status"] for item in json.loads(out)["data"]] == ["cancelled"]

    code, out, err = bertpt("datasets", "delete", dataset["id"])
    assert code == 0, err
    code, _, err = bertpt("datasets", "show", dataset["id"])
    assert code == 3 and err.startswith("error: 404 ")
