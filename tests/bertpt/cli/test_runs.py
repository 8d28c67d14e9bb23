"""``bertpt runs`` against a real API: a run created with options and a config file echoes its
hyperparameters; show and list print the API's JSON; a cancelled run, followed, exits 2; the tables keep
ids whole at 80 columns; the generated options' help shows their defaults; resources from options or a
config body are sent, and `runs show` tells them, the queue and why the run waits."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from rich.console import Console

from bertpt.cli.follow import follow_run
from bertpt.cli.run_config import read_run_config
from bertpt.client import Client
from tests.bertpt.cli.conftest import BertptCli
from tests.e2e.conftest import ApiServer
from tests.support import directory_files, tar_gz


def test_create_echoes_the_hyperparameters_and_a_cancelled_run_follows_to_exit_2(
    start_api: Callable[..., ApiServer],
    api_key: str,
    run_cli: BertptCli,
    tiny_bert_dir: Path,
    small_corpus: Path,
    tmp_path: Path,
) -> None:
    api = start_api()  # no worker: the run stays queued

    def bertpt(*args: str) -> tuple[int, str, str]:
        result = run_cli(*args, api_url=api.base_url, key=api_key)
        return result.exit_code, result.stdout, result.stderr

    archive = tmp_path / "tiny-bert.tar.gz"
    archive.write_bytes(tar_gz(directory_files(tiny_bert_dir, folder="tiny-bert")))
    code, out, err = bertpt("checkpoints", "upload", str(archive), "--json")
    assert code == 0, err
    checkpoint_id = json.loads(out)["id"]

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"hyperparameters": {"batch_size": 4, "max_seq_length": 64}}))
    code, out, err = bertpt(
        "runs", "create", "--base", f"checkpoint:{checkpoint_id}", "--corpus", str(small_corpus),
        "--config", str(config), "--batch-size", "8", "--max-steps", "7", "--learning-rate", "0.001",
        "--name", "cli-test",
    )  # fmt: skip
    assert code == 0, out + err
    assert "uploaded " in err and " as corpus corp_" in err  # the local corpus file went up first
    assert "created run run_" in out and "(cli-test): queued" in out
    given = {
        line.split()[1]: line.split()[3]
        for line in out.splitlines()
        if line.startswith("│") and len(line.split()) == 5
    }
    # The option wins over the config file; the server echoes every value given.
    assert given == {"max_seq_length": "64", "max_steps": "7", "batch_size": "8", "learning_rate": "0.001"}
    assert "others at their defaults" in out
    run_id = out.split("created run ")[1].split()[0]

    code, out, _ = bertpt("runs", "show", run_id, "--json")
    run = json.loads(out)
    assert (run["id"], run["status"], run["name"]) == (run_id, "queued", "cli-test")
    assert (run["hyperparameters"]["batch_size"], run["hyperparameters"]["max_steps"]) == (8, 7)

    code, out, _ = bertpt("runs", "list", "--json", "--status", "queued")
    assert [item["id"] for item in json.loads(out)["data"]] == [run_id]

    code, out, _ = bertpt("runs", "cancel", run_id)
    assert code == 0 and out == f"run {run_id}: cancelled\n"

    code, out, err = bertpt("runs", "follow", run_id)
    assert code == 2, out + err
    assert f"run {run_id} cancelled" in out and "baseline vs final (cancelled" in out
    # Cancelled before it ran: no evaluation is to come, and the table says so.
    assert "The run ended (cancelled) before any evaluation" in out and "No evaluation yet" not in out

    # On a terminal: the live bar drawn and cleared, then the same outcome.
    screen = io.StringIO()
    with Client(api.base_url, api_key) as client:
        assert follow_run(client, run_id, Console(file=screen, force_terminal=True, width=120)) == 2
    assert f"run {run_id} cancelled" in screen.getvalue() and "\x1b[" in screen.getvalue()

    code, out, _ = bertpt("runs", "follow", run_id, "--json")
    assert code == 2
    messages = [json.loads(line) for line in out.splitlines()]
    assert messages and messages[-1]["event"] == "status" and messages[-1]["data"]["status"] == "cancelled"
    assert len({message["id"] for message in messages}) == len(messages)


def test_at_80_columns_the_listings_keep_every_id_whole(
    start_api: Callable[..., ApiServer],
    api_key: str,
    run_cli: BertptCli,
    tiny_bert_dir: Path,
    small_corpus: Path,
    tmp_path: Path,
) -> None:
    """80 columns: what rich assumes when the output is piped. Names and dates wrap; ids are never cut."""
    api = start_api()

    def bertpt(*args: str) -> str:
        result = run_cli(*args, api_url=api.base_url, key=api_key, columns=80)
        assert result.exit_code == 0, result.output
        assert "…" not in result.stdout, result.stdout
        return result.stdout

    archive = tmp_path / "tiny-bert.tar.gz"
    archive.write_bytes(tar_gz(directory_files(tiny_bert_dir, folder="tiny-bert")))
    checkpoint_id = json.loads(bertpt("checkpoints", "upload", str(archive), "--json"))["id"]
    name = "a name of several words, to wrap"
    corpus_id = json.loads(bertpt("corpora", "upload", str(small_corpus), "--json", "--name", name))["id"]
    base = f"checkpoint:{checkpoint_id}"
    created = bertpt(
        "runs",
        "create",
        "--base",
        base,
        "--corpus",
        corpus_id,
        "--name",
        name,
        "--max-seq-length",
        "64",
        "--json",
    )
    run = json.loads(created)

    def whole(text: str, *words: str) -> None:
        for word in words:
            assert any(word in line for line in text.splitlines()), (word, text)

    whole(bertpt("runs", "list"), run["id"], f"checkpoint:{checkpoint_id}")
    whole(bertpt("corpora", "list"), corpus_id)
    whole(bertpt("models", "list"), f"checkpoint:{checkpoint_id}")
    whole(bertpt("checkpoints", "list"), checkpoint_id)
    shown = bertpt("runs", "show", run["id"])
    whole(shown, "gradient_accumulation_steps", "No evaluation yet")  # queued: evaluations are to come


def test_the_generated_options_show_their_defaults_plainly(run_cli: BertptCli) -> None:
    result = run_cli("runs", "create", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "[default: 128]" in text and "[default: 0.15]" in text  # max_seq_length, masked_lm_prob
    assert "[default: (" not in text


def test_a_config_file_with_any_run_body_field_is_a_body_else_hyperparameters(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"resources": {"class": "gpu", "devices": 2}}))
    assert read_run_config(config) == ({"resources": {"class": "gpu", "devices": 2}}, {})
    config.write_text(json.dumps({"base_model": "m", "hyperparameters": {"max_steps": 5}}))
    assert read_run_config(config) == ({"base_model": "m"}, {"max_steps": 5})
    config.write_text(json.dumps({"max_steps": 5, "batch_size": 8}))
    assert read_run_config(config) == ({}, {"max_steps": 5, "batch_size": 8})
    config.write_text(json.dumps({"corpus_id": "corp_x", "hyperparameters": [1]}))
    with pytest.raises(click.BadParameter, match="hyperparameters must be a JSON object"):
        read_run_config(config)


def test_devices_without_a_resource_class_is_a_usage_error(run_cli: BertptCli) -> None:
    result = run_cli("runs", "create", "--base", "m", "--corpus", "corp_x", "--devices", "2")
    assert result.exit_code == 2
    assert "--devices needs --resource-class" in result.stderr
    help_text = " ".join(run_cli("runs", "create", "--help").stdout.split())
    assert "any POST /v1/runs body field" in help_text and "--resource-class [cpu|gpu]" in help_text


def test_resources_from_options_or_a_config_body_are_sent_and_shown_with_why_the_run_waits(
    start_api: Callable[..., ApiServer],
    api_key: str,
    run_cli: BertptCli,
    tiny_bert_dir: Path,
    small_corpus: Path,
    tmp_path: Path,
) -> None:
    api = start_api()  # no worker: the runs stay queued, no worker serves their queue

    def bertpt(*args: str) -> str:
        result = run_cli(*args, api_url=api.base_url, key=api_key)
        assert result.exit_code == 0, result.output
        return result.stdout

    archive = tmp_path / "tiny-bert.tar.gz"
    archive.write_bytes(tar_gz(directory_files(tiny_bert_dir, folder="tiny-bert")))
    base = "checkpoint:" + json.loads(bertpt("checkpoints", "upload", str(archive), "--json"))["id"]
    corpus_id = json.loads(bertpt("corpora", "upload", str(small_corpus), "--json"))["id"]
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"resources": {"class": "gpu", "devices": 2}}))
    from_config = json.loads(
        bertpt("runs", "create", "--base", base, "--corpus", corpus_id, "--config", str(config),
               "--batch-size", "4", "--max-seq-length", "64", "--json")
    )  # fmt: skip
    assert from_config["resources"] == {"class": "gpu", "devices": 2}
    assert from_config["hyperparameters"]["batch_size"] == 4
    from_options = json.loads(
        bertpt("runs", "create", "--base", base, "--corpus", corpus_id, "--resource-class", "cpu",
               "--devices", "2", "--batch-size", "4", "--max-seq-length", "64", "--json")
    )  # fmt: skip
    assert from_options["resources"] == {"class": "cpu", "devices": 2}
    gpu_queue = from_config["queue"]
    assert gpu_queue.endswith(".gpu") and from_options["queue"].endswith(".cpu")

    shown = " ".join(bertpt("runs", "show", from_config["id"]).split())
    assert "resources gpu, 2 devices" in shown and f"queue {gpu_queue}" in shown
    assert f"waiting: no worker serves {gpu_queue}" in shown
