"""Where the client finds the API and its key: the environment first, then the file ``bertpt login`` wrote.

``BERTPT_API_URL`` and ``BERTPT_API_KEY`` win over the file, each on its own; the file is
``$XDG_CONFIG_HOME/bertpt/config.json`` (``~/.config/bertpt/config.json`` without XDG_CONFIG_HOME), a JSON
object ``{"api_url", "api_key"}`` readable by its owner only (mode 0600, in a 0700 folder). It is written
atomically: a new file created with mode 0600 from its first byte, then renamed over the old one, so that
neither a reader nor a crash ever sees half a file, nor the key in a file others can read. The key is never
in a ``repr()`` nor a log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["API_KEY_VARIABLE", "API_URL_VARIABLE", "DEFAULT_API_URL", "ClientConfig", "config_path"]

logger = logging.getLogger(__name__)

API_URL_VARIABLE = "BERTPT_API_URL"
API_KEY_VARIABLE = "BERTPT_API_KEY"
# Where `bertpt serve` listens by default.
DEFAULT_API_URL = "http://127.0.0.1:8000"
_FILE_MODE = 0o600
_FOLDER_MODE = 0o700


def config_path() -> Path:
    """The configuration file: ``$XDG_CONFIG_HOME/bertpt/config.json``, else
    ``~/.config/bertpt/config.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bertpt" / "config.json"


@dataclass(frozen=True)
class ClientConfig:
    """The API's base URL (``http://host:port``, without ``/v1``) and the API key (``bpt_...``; None: none
    configured, and the API answers 401)."""

    api_url: str = DEFAULT_API_URL
    api_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        key = "<set>" if self.api_key else None
        return f"ClientConfig(api_url={self.api_url!r}, api_key={key})"

    @classmethod
    def load(cls, path: Path | None = None) -> ClientConfig:
        """The configuration in force: each of ``BERTPT_API_URL`` and ``BERTPT_API_KEY`` when set (and not
        empty), else its value in the file at ``path`` (default :func:`config_path`), else the default (the
        local API, no key). A file that cannot be read or parsed is reported in the log and ignored; one
        readable by others is used, with a warning to ``chmod 600`` it."""
        stored = _read_file(path or config_path())
        api_url = os.environ.get(API_URL_VARIABLE) or stored.get("api_url") or DEFAULT_API_URL
        api_key = os.environ.get(API_KEY_VARIABLE) or stored.get("api_key") or None
        return cls(api_url=str(api_url), api_key=str(api_key) if api_key else None)

    def save(self, path: Path | None = None) -> Path:
        """Write this configuration to ``path`` (default :func:`config_path`) with mode 0600, atomically;
        its folder is created with mode 0700 when missing. Returns the path. OSError when it cannot be
        written (the old file, if any, is then unchanged)."""
        target = path or config_path()
        target.parent.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
        content = json.dumps({"api_url": self.api_url, "api_key": self.api_key}, indent=2) + "\n"
        # mkstemp creates the file with mode 0600 (O_EXCL): the key is never in a file others may read.
        descriptor, temporary = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                os.fchmod(stream.fileno(), _FILE_MODE)  # whatever the umask
                stream.write(content)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return target


def _read_file(path: Path) -> dict[str, Any]:
    """The file's JSON object, or {} when it is missing or unreadable (the latter logged, without its
    content)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("cannot read the client configuration %s: %s", path, exc.strerror or exc)
        return {}
    if stat.S_IMODE(mode) & 0o077:
        logger.warning(
            "the client configuration %s can be read by others (mode %o): `chmod 600 %s`",
            path,
            stat.S_IMODE(mode),
            path,
        )
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        logger.warning("ignoring the client configuration %s: not JSON (line %d)", path, exc.lineno)
        return {}
    if not isinstance(values, dict):
        logger.warning("ignoring the client configuration %s: not a JSON object", path)
        return {}
    return values
