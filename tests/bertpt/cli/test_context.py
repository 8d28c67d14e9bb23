"""What every client command shares: an API error, or no API at all, is one readable line on stderr and
exit code 3 (saying where the API's URL came from when it did not answer); the key never appears in it;
numbers are written one way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.table import Table

from bertpt.cli.context import console, fmt
from bertpt.cli.follow import train_metrics_line
from tests.bertpt.cli.conftest import BertptCli
from tests.e2e.conftest import ApiServer


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text


def test_api_errors_are_one_line_on_stderr_and_exit_3(
    start_api: Callable[..., ApiServer], api_key: str, run_cli: BertptCli
) -> None:
    api = start_api()

    missing = run_cli("runs", "show", "run_missing", api_url=api.base_url, key=api_key)
    assert missing.exit_code == 3 and missing.stdout == ""
    assert one_line(missing.stderr).startswith("error: 404 not_found: ")

    refused = run_cli(
        "runs", "create", "--base", "tiny", "--corpus", "corp_x", "--learning-rate", "2",
        api_url=api.base_url, key=api_key,
    )  # fmt: skip
    assert refused.exit_code == 3
    assert one_line(refused.stderr).startswith("error: 422 ") and "learning_rate" in refused.stderr

    wrong_key = run_cli("runs", "list", api_url=api.base_url, key="bpt_wrong-key")
    assert wrong_key.exit_code == 3 and one_line(wrong_key.stderr).startswith("error: 401 ")
    assert "bpt_wrong-key" not in wrong_key.output


def test_an_api_that_does_not_answer_is_one_line_naming_it(
    free_port: Callable[[], int], run_cli: BertptCli
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("runs", "list", "--json", api_url=url, key="bpt_any")
    assert result.exit_code == 3 and result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith(f"error: connection_error: cannot reach the API at {url}/v1/runs")
    assert "this API URL is set by BERTPT_API_URL" in line
    assert "`bertpt login --api-url URL` or BERTPT_API_URL=URL" in line


def test_an_unanswered_url_says_it_came_from_the_saved_file(
    free_port: Callable[[], int], run_cli: BertptCli, config_home: Path
) -> None:
    saved = config_home / "bertpt" / "config.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps({"api_url": f"http://127.0.0.1:{free_port()}", "api_key": "bpt_any"}))
    saved.chmod(0o600)
    line = one_line(run_cli("corpora", "list").stderr)
    assert (
        "connection_error" in line and f"this API URL is read from {saved}, written by `bertpt login`" in line
    )


def test_with_no_configuration_the_default_url_is_named_as_the_default(
    free_port: Callable[[], int], run_cli: BertptCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No BERTPT_API_URL, no `bertpt login`: the client tries the local API, and says that it did so
    because nothing else was configured (the default, a free port here: nothing answers it)."""
    default = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr("bertpt.client.config.DEFAULT_API_URL", default)
    result = run_cli("runs", "list")
    assert result.exit_code == 3
    line = one_line(result.stderr)
    assert f"cannot reach the API at {default}/v1/runs" in line
    assert "this API URL is the default: no BERTPT_API_URL is set and `bertpt login` saved none" in line
    assert "`bertpt login --api-url URL` or BERTPT_API_URL=URL" in line


def test_numbers_are_written_one_way() -> None:
    """Learning rates of one table read alike: 5e-05 beside 2e-04, not 5.000e-05 beside 0.0002."""
    assert [fmt(value) for value in (5e-05, 2e-04, 1.5e-4, 0.001, 0.0123, 6.25, 123456.0)] == [
        "5e-05",
        "2e-04",
        "1.5e-04",
        "0.001",
        "0.0123",
        "6.25",
        "1.235e+05",
    ]
    assert (fmt(0.0), fmt(None), fmt(float("nan")), fmt(1234), fmt(True)) == (
        "0",
        "-",
        "nan",
        "1,234",
        "true",
    )
    assert "lr 5e-05" in train_metrics_line({"loss": 2.0, "learning_rate": 5e-05, "tokens_per_second": 10.0})


def test_the_commands_console_shows_names_as_written_not_as_markup() -> None:
    """``runs list`` and ``corpora list`` put names from the API in table cells: ``[/x]`` must not break
    the table (rich's MarkupError) nor style it."""
    out = console()
    table = Table("name")
    table.add_row("[/bold] [red]biomed")
    with out.capture() as captured:
        out.print(table)
    assert "[/bold] [red]biomed" in captured.get()
