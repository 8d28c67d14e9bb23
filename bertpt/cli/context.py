"""What every client command shares: the :class:`~bertpt.client.Client` built from the configuration, API
errors as one line on stderr with a non-zero exit, ``--json`` for scripts, and how numbers are shown.

Exit codes of every client command: 0 done; 2 for a command line given wrong (click's usage errors);
:data:`EXIT_API_ERROR` (3) when the API refused the request or could not be reached. ``runs follow`` (and
``runs create --follow``) exit with the outcome of the run: 0 succeeded, 1 failed, 2 cancelled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import httpx
from pydantic import BaseModel
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from bertpt.client import ApiError, Client
from bertpt.client.config import API_URL_VARIABLE, config_path

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_CODES_HELP",
    "ClientCommand",
    "ClientGroup",
    "WholeWordTable",
    "api_url_origin",
    "client_from",
    "console",
    "fmt",
    "fmt_seconds",
    "json_option",
    "jsonable",
    "print_json",
    "remember_url_origin",
    "transfer_bar",
]

EXIT_API_ERROR = 3
# What an ApiError is when no answer came at all: the API's URL may be the wrong one.
_UNANSWERED = frozenset({"connection_error", "timeout"})
# Wide enough for any table measured as if the console had no width limit.
_UNLIMITED_WIDTH = 100_000
# Where ctx.meta keeps where the API's URL of the command came from (see api_url_origin).
_URL_ORIGIN = "bertpt.api_url_origin"

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the API's JSON (for scripts) instead of tables."
)


@contextmanager
def _api_errors(ctx: click.Context) -> Iterator[None]:
    """An API error or an unreachable API ends the command with one line on stderr and
    :data:`EXIT_API_ERROR`; the key never appears in it (ApiError carries only the API's error body). When
    no answer came, the line also says where the API's URL came from and how to set another."""
    try:
        yield
    except ApiError as exc:
        origin = ctx.meta.get(_URL_ORIGIN) if exc.type in _UNANSWERED else None
        hint = f" ({_url_hint(origin)})" if origin else ""
        click.echo(f"error: {exc}{hint}", err=True)
        raise click.exceptions.Exit(EXIT_API_ERROR) from None
    except httpx.HTTPError as exc:  # the client wraps what it sends in ApiError; this is a safety net
        click.echo(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", err=True)
        raise click.exceptions.Exit(EXIT_API_ERROR) from None


def api_url_origin(given_option: str | None = None) -> str:
    """Where the API's URL in force comes from, in words: ``given_option`` (the option that gave it, e.g.
    ``--api-url``) when one did, else ``BERTPT_API_URL``, else the file ``bertpt login`` wrote (as
    :meth:`ClientConfig.load <bertpt.client.ClientConfig.load>` chooses), else the default."""
    if given_option:
        return f"given with {given_option}"
    if os.environ.get(API_URL_VARIABLE):
        return f"set by {API_URL_VARIABLE}"
    path = config_path()
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and stored.get("api_url"):
        return f"read from {path}, written by `bertpt login`"
    return f"the default: no {API_URL_VARIABLE} is set and `bertpt login` saved none"


def remember_url_origin(ctx: click.Context, origin: str) -> None:
    """Record where the command's API URL came from (:func:`api_url_origin`), for its connection error."""
    ctx.meta[_URL_ORIGIN] = origin


def _url_hint(origin: str) -> str:
    return (
        f"this API URL is {origin}; point the client at yours with `bertpt login --api-url URL` or "
        f"{API_URL_VARIABLE}=URL"
    )


EXIT_CODES_HELP = (
    "Exit codes: 0 done; 2 a command line given wrong; 3 the API refused the request (one line on stderr) "
    "or could not be reached. `runs follow`: 0 the run succeeded, 1 it failed, 2 it was cancelled."
)


class ClientGroup(click.Group):
    """A group of client commands: what the API refuses is one line on stderr (see the module docstring),
    and the exit codes are told in its ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_CODES_HELP)
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _api_errors(ctx):
            return super().invoke(ctx)


class ClientCommand(click.Command):
    """A client command outside a :class:`ClientGroup` (``bertpt login``)."""

    def invoke(self, ctx: click.Context) -> Any:
        with _api_errors(ctx):
            return super().invoke(ctx)


def client_from(ctx: click.Context) -> Client:
    """The command's client: a :class:`Client` passed as the context's object (a caller's, with a
    transport of its own), else one configured from ``BERTPT_API_URL``/``BERTPT_API_KEY`` or the file
    ``bertpt login`` wrote, closed when the command ends."""
    given = ctx.find_object(Client)
    if given is not None:
        return given
    client = ctx.meta.get("bertpt.client")
    if client is None:
        client = ctx.meta["bertpt.client"] = ctx.with_resource(Client())
        remember_url_origin(ctx, api_url_origin())
    return client


def console() -> Console:
    """Where tables and progress go (stdout; plain text when it is not a terminal). Lines are not broken
    (the terminal wraps them), so that a message stays one line in a log. No console markup: the names,
    messages and warnings in the tables come from users and the API (a run named ``[/x]`` would otherwise
    break the table); styles are given as ``style=`` or :class:`rich.text.Text`."""
    return Console(highlight=False, soft_wrap=True, markup=False)


@contextmanager
def transfer_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar of bytes sent or received (on stderr, so that ``--json`` output stays clean); yields
    the ``progress(done, total)`` callback the client's uploads and downloads take."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None)

    with bar:
        yield progress


def jsonable(value: Any) -> Any:
    """Pydantic models (and lists and dicts of them) as JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, nothing else (for ``jq`` and scripts)."""
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def fmt(value: Any) -> str:
    """A metric or figure for a table: up to 4 significant digits, ``-`` for none, ``nan``/``inf`` as such.
    A float under 0.001 or from 100,000 on is written as a power of ten without trailing zeros, so that
    learning rates read alike: ``5e-05``, ``2e-04``, ``0.001``, ``0.0123``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class WholeWordTable(Table):
    """A :class:`rich.table.Table` that never cuts a word: an id (``run_...``, ``corp_...``), a model or a
    metric name (``masked_lm_accuracy``) is what one copies or greps, so no column gets narrower than its
    longest word. On a console too narrow for that (80 columns, the width rich assumes when the output is
    piped), the columns wrap at spaces down to those widths, and the table is then as wide as it must be:
    its lines run past the console's width (a terminal wraps them) rather than ending in ``…``."""

    def _fit_words(self) -> None:
        for column in self.columns:
            texts = [
                text.plain if isinstance(text, Text) else text
                for text in (column.header, *column.cells)
                if isinstance(text, (str, Text))
            ]
            column.min_width = max(column.min_width or 0, *(cell_len(w) for t in texts for w in t.split()), 0)
            column.overflow = "fold"  # a word longer than the column (never, but not "…" if so)
            # Cells of one word each (ids, numbers) do not wrap: the columns with spaces give way first.
            column.no_wrap = column.no_wrap or all(len(text.split()) <= 1 for text in texts[1:])

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        self._fit_words()
        return super().__rich_measure__(console, options)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._fit_words()
        # Its narrowest rendering with every word whole, measured without the console's limit.
        needed = super().__rich_measure__(console, options.update_width(_UNLIMITED_WIDTH)).minimum
        yield from super().__rich_console__(console, options.update_width(max(options.max_width, needed)))


def fmt_seconds(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
