"""The ``bertpt`` client commands, built on :class:`bertpt.client.Client`: ``login``, ``corpora``,
``checkpoints``, ``models``, ``runs``, ``evaluations``, ``datasets`` (registered beside the local commands
in :mod:`worker.cli`).

Exit codes: see :mod:`bertpt.cli.context` (3: the API refused the request or could not be reached) and
:mod:`bertpt.cli.follow` (a followed run's outcome: 0 succeeded, 1 failed, 2 cancelled).
"""

from __future__ import annotations

from bertpt.cli.checkpoints import checkpoints, models
from bertpt.cli.corpora import corpora
from bertpt.cli.evaluations import datasets, evaluations
from bertpt.cli.login import login_command
from bertpt.cli.runs import runs

__all__ = [
    "CLIENT_COMMANDS",
    "checkpoints",
    "corpora",
    "datasets",
    "evaluations",
    "login_command",
    "models",
    "runs",
]

CLIENT_COMMANDS = (login_command, corpora, checkpoints, models, runs, evaluations, datasets)
