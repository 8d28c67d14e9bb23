"""The client commands against a real API: ``bertpt serve`` (and ``bertpt worker`` where a run must train)
started by the end-to-end fixtures, the commands run in process by click's CliRunner on the real ``bertpt``
group, configured by ``BERTPT_API_URL``/``BERTPT_API_KEY`` as a user's shell would be."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.e2e.conftest import (  # noqa: F401  (fixtures)
    api_key,
    database,
    database_url,
    free_port,
    headers,
    poll,
    settings,
    start_api,
    start_worker,
    started,
    storage,
    submit_run,
    test_token,
)
from worker.cli import cli

BertptCli = Callable[..., Result]


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    """``XDG_CONFIG_HOME`` of the commands: where ``bertpt login`` writes, empty at first."""
    home = tmp_path / "config-home"
    home.mkdir()
    return home


@pytest.fixture
def run_cli(config_home: Path) -> BertptCli:
    """``run_cli(*args, api_url=None, key=None, columns=220, input=None) -> click Result``: ``bertpt
    <args>`` in process, with the API URL and key in the environment (none: unset), on a terminal-less
    console ``columns`` wide (80: what rich assumes when the output is piped)."""

    def run(
        *args: str, api_url: str | None = None, key: str | None = None, columns: int = 220, **kwargs: Any
    ) -> Result:
        env = {
            "BERTPT_API_URL": api_url,
            "BERTPT_API_KEY": key,
            "XDG_CONFIG_HOME": str(config_home),
            "COLUMNS": str(columns),
        }
        return CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False, **kwargs)

    return run
