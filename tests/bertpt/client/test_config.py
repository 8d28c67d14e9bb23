"""The client's configuration: the environment first, then the file `bertpt login` writes (mode 0600 from
its creation, replaced atomically), the key never shown."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bertpt.client import Client, ClientConfig
from bertpt.client.config import config_path


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("BERTPT_API_URL", raising=False)
    monkeypatch.delenv("BERTPT_API_KEY", raising=False)
    return home


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the file's mode must come from the code, not the umask."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_0600_in_a_0700_folder_whatever_the_umask(config_home: Path, open_umask: None) -> None:
    path = ClientConfig(api_url="http://api.example:8000", api_key="bpt_secret").save()
    assert path == config_home / "bertpt" / "config.json" == config_path()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert ClientConfig.load() == ClientConfig(api_url="http://api.example:8000", api_key="bpt_secret")
    assert [entry.name for entry in path.parent.iterdir()] == ["config.json"]  # no temporary file left


def test_saving_replaces_a_file_others_could_read(config_home: Path) -> None:
    path = config_home / "bertpt" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"api_url": "http://old", "api_key": "bpt_old"}')
    path.chmod(0o644)
    inode = path.stat().st_ino
    ClientConfig(api_url="http://new", api_key="bpt_new").save()
    # A new file renamed over the old one (never the old file rewritten in place, with its old mode).
    assert path.stat().st_ino != inode and mode(path) == 0o600
    assert ClientConfig.load().api_key == "bpt_new"


def test_the_environment_wins_over_the_file_each_setting_on_its_own(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ClientConfig(api_url="http://from-file:8000", api_key="bpt_file").save()
    monkeypatch.setenv("BERTPT_API_KEY", "bpt_env")
    assert ClientConfig.load() == ClientConfig(api_url="http://from-file:8000", api_key="bpt_env")
    monkeypatch.setenv("BERTPT_API_URL", "http://from-env:9000")
    assert ClientConfig.load() == ClientConfig(api_url="http://from-env:9000", api_key="bpt_env")
    # And a Client built without arguments uses them; arguments win over both.
    with Client() as client:
        assert client.api_url == "http://from-env:9000"
        assert client._http.headers["Authorization"] == "Bearer bpt_env"
    with Client("http://given", "bpt_given") as client:
        assert client.api_url == "http://given"
        assert client._http.headers["Authorization"] == "Bearer bpt_given"


def test_without_environment_or_file_the_local_api_without_a_key(config_home: Path) -> None:
    assert ClientConfig.load() == ClientConfig(api_url="http://127.0.0.1:8000", api_key=None)


def test_the_key_is_never_shown(config_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = ClientConfig(api_url="http://api", api_key="bpt_very-secret")
    assert "bpt_very-secret" not in repr(config) + str(config)
    assert repr(config) == "ClientConfig(api_url='http://api', api_key=<set>)"
    path = config.save()
    path.chmod(0o644)  # a warning about the mode...
    with caplog.at_level(logging.DEBUG):
        assert ClientConfig.load().api_key == "bpt_very-secret"
        path.write_text("{not json")  # ...and one about the content
        assert ClientConfig.load().api_key is None
    assert "chmod 600" in caplog.text and "not JSON" in caplog.text
    assert "bpt_very-secret" not in caplog.text
