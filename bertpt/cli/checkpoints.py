"""``bertpt models`` (what a run may start from) and ``bertpt checkpoints`` (BERT checkpoints of yours,
uploaded to start runs from as ``checkpoint:<id>``)."""

from __future__ import annotations

from pathlib import Path

import click

from bertpt.cli.context import (
    ClientGroup,
    WholeWordTable,
    client_from,
    console,
    fmt,
    json_option,
    print_json,
    transfer_bar,
)
from bertpt.cli.corpora import print_warnings

__all__ = ["checkpoints", "models"]


# -- models ---------------------------------------------------------------------------------------------


@click.group("models", cls=ClientGroup)
def models() -> None:
    """Base models a run may start from."""


@models.command("list")
@json_option
@click.pass_context
def list_models_command(ctx: click.Context, as_json: bool) -> None:
    """Built-in models, your uploaded checkpoints (checkpoint:<id>) and succeeded runs (run:<id>)."""
    found = client_from(ctx).models.list()
    if as_json:
        print_json({"data": found})
        return
    table = WholeWordTable("id", "kind", "available", "parameters", "description")
    for model in found:
        table.add_row(
            model.id, str(model.kind), fmt(model.available), fmt(model.parameters), model.description or ""
        )
    console().print(table)


# -- checkpoints ----------------------------------------------------------------------------------------


@click.group("checkpoints", cls=ClientGroup)
def checkpoints() -> None:
    """Your BERT checkpoints on the server, to start runs from (--base checkpoint:<id>)."""


@checkpoints.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Display name (default: the file name without extension).")
@json_option
@click.pass_context
def upload_checkpoint_command(ctx: click.Context, file: Path, name: str | None, as_json: bool) -> None:
    """Upload a .tar.gz, .tar or .zip of a save_pretrained directory (safetensors weights), or an archive
    downloaded from bertpt."""
    with transfer_bar(f"uploading {file.name}") as progress:
        checkpoint = client_from(ctx).checkpoints.upload(file, name=name, progress=progress)
    if as_json:
        print_json(checkpoint)
        return
    out = console()
    out.print(
        f"checkpoint {checkpoint.id} ({checkpoint.name}): {fmt(checkpoint.parameters)} parameters; start a "
        f"run from it with --base checkpoint:{checkpoint.id}",
        markup=False,
    )
    print_warnings(out, checkpoint.warnings)


@checkpoints.command("list")
@json_option
@click.pass_context
def list_checkpoints_command(ctx: click.Context, as_json: bool) -> None:
    """Every uploaded checkpoint, newest first."""
    found = client_from(ctx).checkpoints.list()
    if as_json:
        print_json({"data": found})
        return
    table = WholeWordTable(
        "id", "name", "layers x hidden", "parameters", "pre-training heads", "bytes", "created"
    )
    for checkpoint in found:
        table.add_row(
            checkpoint.id,
            checkpoint.name,
            f"{checkpoint.config.layers}x{checkpoint.config.hidden_size}",
            fmt(checkpoint.parameters),
            fmt(checkpoint.has_pretraining_heads),
            fmt(checkpoint.bytes),
            f"{checkpoint.created_at:%Y-%m-%d %H:%M}",
        )
    console().print(table)


@checkpoints.command("show")
@click.argument("checkpoint_id")
@json_option
@click.pass_context
def show_checkpoint_command(ctx: click.Context, checkpoint_id: str, as_json: bool) -> None:
    """An uploaded checkpoint: its configuration and size."""
    checkpoint = client_from(ctx).checkpoints.get(checkpoint_id)
    if as_json:
        print_json(checkpoint)
        return
    config = checkpoint.config
    click.echo(
        f"checkpoint {checkpoint.id} ({checkpoint.name}): {config.model_type}, {config.layers} layers, "
        f"hidden {config.hidden_size}, {fmt(checkpoint.parameters)} parameters, {fmt(checkpoint.bytes)} bytes"
    )


@checkpoints.command("delete")
@click.argument("checkpoint_id")
@click.pass_context
def delete_checkpoint_command(ctx: click.Context, checkpoint_id: str) -> None:
    """Delete an uploaded checkpoint (refused while an active run starts from it)."""
    client_from(ctx).checkpoints.delete(checkpoint_id)
    click.echo(f"deleted checkpoint {checkpoint_id}")
