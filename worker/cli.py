"""The ``bertpt`` command.

Built on click (rather than Typer, which vendors its own click and cannot host commands whose options
are generated from the hyperparameter schema): ``prepare`` and ``train`` get one option per schema field.
"""

from __future__ import annotations

import click

from app.admin import admin
from bertpt.cli import CLIENT_COMMANDS
from worker.evaluation.cli import evaluate_command
from worker.pretraining.cli import prepare_command
from worker.pretraining.train_cli import train_command
from worker.service_cli import serve_command, worker_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bertpt")
def cli() -> None:
    """bertpt: continual pre-training of BERT checkpoints (masked-LM + next-sentence prediction)."""


cli.add_command(prepare_command)
cli.add_command(train_command)
cli.add_command(evaluate_command)
cli.add_command(admin)
cli.add_command(serve_command)
cli.add_command(worker_command)
for client_command in CLIENT_COMMANDS:  # the client commands: talk to a bertpt API (bertpt.cli)
    cli.add_command(client_command)


def main() -> None:
    cli(prog_name="bertpt")
