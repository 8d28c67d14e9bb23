"""``bertpt login``: the key checked against a real API, saved readable by its owner only, never printed."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

from tests.bertpt.cli.conftest import BertptCli
from tests.e2e.conftest import ApiServer


def test_login_saves_a_checked_key_with_mode_0600_and_never_prints_it(
    start_api: Callable[..., ApiServer], api_key: str, run_cli: BertptCli, config_home: Path
) -> None:
    api = start_api()
    saved = config_home / "bertpt" / "config.json"

    refused = run_cli("login", "--api-url", api.base_url, input="bpt_not-a-key\n")
    assert refused.exit_code == 3
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: 401 ")
    assert "bpt_not-a-key" not in refused.output
    assert not saved.exists()  # a refused key is not saved

    result = run_cli("login", "--api-url", api.base_url, "--api-key-stdin", input=f"{api_key}\n")
    assert result.exit_code == 0, result.output
    assert api_key not in result.output
    assert f"logged in to {api.base_url}" in result.stdout and str(saved) in result.stdout
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {"api_url": api.base_url, "api_key": api_key}

    # The other commands use the saved configuration (no BERTPT_API_URL/KEY in their environment).
    listed = run_cli("corpora", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == {"data": []}
