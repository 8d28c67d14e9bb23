"""Command-line options generated from the hyperparameter schema: a switch with a named setting."""

from __future__ import annotations

from typing import Any

from worker.pretraining.cli_options import schema_options
from worker.pretraining.hyperparameters import Hyperparameters


def test_torch_compile_is_a_choice_of_three_on_the_command_line() -> None:
    import click

    @click.command()
    @schema_options(Hyperparameters, ["torch_compile"])
    def command(**params: Any) -> None:
        pass

    (option,) = command.params
    assert option.opts == ["--torch-compile"] and isinstance(option.type, click.Choice)
    assert list(option.type.choices) == ["auto", "true", "false"]
