"""``bertpt login``: save the API's URL and an API key for the client commands (and ``bertpt.client``).

The key is read without echo (or from stdin for scripts), checked against the API, and written with
:meth:`~bertpt.client.ClientConfig.save` (mode 0600, atomically); it is never printed. ``BERTPT_API_URL``
and ``BERTPT_API_KEY`` still win over the file when set.
"""

from __future__ import annotations

import sys

import click

from bertpt.cli.context import ClientCommand, api_url_origin, remember_url_origin
from bertpt.client import Client, ClientConfig

__all__ = ["login_command"]


@click.command("login", cls=ClientCommand)
@click.option(
    "--api-url",
    help="The API's base URL, e.g. http://127.0.0.1:8000 (default: BERTPT_API_URL, else the saved one, else "
    "the local API).",
)
@click.option(
    "--api-key-stdin",
    is_flag=True,
    help="Read the key from the first line of stdin instead of prompting (as when stdin is not a terminal).",
)
@click.pass_context
def login_command(ctx: click.Context, api_url: str | None, api_key_stdin: bool) -> None:
    """Save the API's URL and your API key (bpt_...) for the client commands, readable by you only. The key
    is checked against the API first, and never printed."""
    url = (api_url or ClientConfig.load().api_url).rstrip("/")
    remember_url_origin(ctx, api_url_origin("--api-url" if api_url else None))
    if api_key_stdin or not sys.stdin.isatty():
        key = sys.stdin.readline().strip()
    else:
        key = click.prompt("API key", hide_input=True, err=True).strip()
    if not key:
        raise click.UsageError("no API key given")
    with Client(api_url=url, api_key=key) as client:
        # Any authenticated read proves the key: the smallest one.
        client.request("GET", "/v1/corpora", params={"limit": 1})
    path = ClientConfig(api_url=url, api_key=key).save()
    click.echo(f"logged in to {url}; saved to {path} (mode 0600)")
