"""Watching a run live in the terminal: ``bertpt runs follow ID`` (and ``runs create --follow``).

:func:`follow_run` reads the run's live stream (``client.runs.stream``: Server-Sent Events, resumed with
``Last-Event-ID`` after a dropped connection, no event twice) and shows its status, a progress bar with
step/total and the ETA the API computes (counting down between updates), the latest training loss terms
and accuracies, and the run's events as they happen; then the baseline-vs-final table, and it returns the
exit code of the run's outcome (:data:`OUTCOME_EXIT_CODES`). On a console that is not a terminal (a log
file, CI) the bar cannot redraw in place: a progress line is printed every tenth of the steps instead.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from app.runs.schemas import RunEventPublic, RunPublic
from bertpt.cli.context import fmt, fmt_seconds
from bertpt.cli.render import baseline_final_table, eval_instances
from bertpt.client import Client

__all__ = ["EXIT_INTERRUPTED", "OUTCOME_EXIT_CODES", "follow_run", "follow_run_json", "train_metrics_line"]

# The exit code of a followed run's outcome; 130 when the user stopped following (Ctrl-C: the run goes on).
OUTCOME_EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}
EXIT_INTERRUPTED = 130
_EVENT_STYLE = {"warning": "yellow", "error": "bold red"}
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "cancelling": "yellow"}


def train_metrics_line(metrics: dict[str, Any]) -> str:
    """The latest training window: the loss and its terms, the accuracies, the learning rate, the speed."""
    parts = [f"loss {fmt(metrics.get('loss'))}"]
    terms = [
        f"{label} {fmt(metrics[name])}"
        for name, label in (("masked_lm_loss", "masked-LM"), ("next_sentence_loss", "NSP"))
        if metrics.get(name) is not None
    ]
    if terms:
        parts[0] += f" = {' + '.join(terms)}"
    accuracies = [
        f"{label} {metrics[name]:.1%}"
        for name, label in (("masked_lm_accuracy", "masked-LM"), ("next_sentence_accuracy", "NSP"))
        if isinstance(metrics.get(name), (int, float))
    ]
    if accuracies:
        parts.append("accuracy " + ", ".join(accuracies))
    if isinstance(metrics.get("learning_rate"), (int, float)):
        parts.append(f"lr {fmt(float(metrics['learning_rate']))}")
    if isinstance(metrics.get("tokens_per_second"), (int, float)):
        parts.append(f"{metrics['tokens_per_second']:,.0f} tok/s")
    return " · ".join(parts)


class _EtaColumn(ProgressColumn):
    """The API's ETA, counted down between its updates (the last one and when it came are task fields)."""

    def render(self, task: Task) -> Text:
        eta, received = task.fields.get("eta"), task.fields.get("eta_received")
        if eta is None or received is None:
            return Text("ETA -", style="dim")
        return Text(f"ETA {fmt_seconds(eta - (time.monotonic() - received))}", style="cyan")


class _RunProgress(Progress):
    """The progress bar with the latest training metrics on a line under it."""

    def __init__(self, console: Console) -> None:
        self.metrics_line = ""  # before super().__init__, which renders once
        super().__init__(
            TextColumn("{task.fields[status]}"),
            BarColumn(),
            TextColumn("step {task.completed:.0f}/{task.fields[total_text]}"),
            _EtaColumn(),
            console=console,
            transient=True,
            refresh_per_second=4,
        )

    def get_renderables(self) -> Any:
        yield self.make_tasks_table(self.tasks)
        if self.metrics_line:
            yield Text(self.metrics_line, style="dim", overflow="ellipsis", no_wrap=True)


class _RunView:
    """What the terminal shows of a followed run, fed the stream's events one by one; ``fetch_run`` reads
    the run again (its ETA while queued or preparing is computed by the API, not streamed)."""

    def __init__(self, console: Console, run: RunPublic, fetch_run: Callable[[], RunPublic]) -> None:
        self.console = console
        self.run = run
        self.fetch_run = fetch_run
        self.status = str(run.status)
        self.step = run.progress.step or 0
        self.total = run.progress.total_steps
        self.eta = run.eta_seconds
        self.eta_received = time.monotonic()
        self.train: dict[str, Any] = dict(run.latest.train or {})
        self.warned_warmup = False
        self.told_waiting = False  # the run's waiting_reason is printed once
        # The evaluated sentence pairs per split, once the training_started event told them.
        self.instances: dict[str, int] | None = None
        self.progress = _RunProgress(console)
        self.task = self.progress.add_task("run", total=self.total, completed=self.step, **self._fields())
        self.next_line_step = 0  # plain consoles: the step from which the next progress line is printed

    def __enter__(self) -> _RunView:
        if self.console.is_terminal:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _fields(self) -> dict[str, Any]:
        style = _STATUS_STYLE.get(self.status, "bold")
        return {
            "status": f"[{style}]{self.status}[/]",
            "total_text": "-" if self.total is None else str(self.total),
            "eta": self.eta,
            "eta_received": self.eta_received,
        }

    def print(self, renderable: RenderableType | str, style: str | None = None) -> None:
        self.console.print(renderable, style=style, markup=False, highlight=False)

    def _refresh(self, *, status_changed: bool = False) -> None:
        self.progress.metrics_line = train_metrics_line(self.train) if self.train else ""
        self.progress.update(self.task, completed=self.step, total=self.total, **self._fields())
        if self.console.is_terminal:
            return
        # No redrawing in place: a line at each status change and every tenth of the steps.
        if status_changed or (self.total and self.step >= self.next_line_step and self.step > 0):
            total = "-" if self.total is None else self.total
            line = f"{self.status}: step {self.step}/{total}, ETA {fmt_seconds(self.eta)}"
            if self.train:
                line += f" · {self.progress.metrics_line}"
            self.print(line, style="dim")
            if self.total:
                tenth = max(1, self.total // 10)
                self.next_line_step = (self.step // tenth + 1) * tenth

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "status":
            self._on_status(data)
        elif event == "metric":
            self._on_metric(data)
        elif event == "event":
            if data.get("type") == "training_started":
                self.instances = eval_instances([RunEventPublic.model_validate(data)]) or self.instances
                self._training(total=(data.get("data") or {}).get("max_steps"))
            style = _EVENT_STYLE.get(str(data.get("level")))
            stamp = str(data.get("created_at", ""))[11:19]
            self.print(f"{stamp} {data.get('message', '')}".strip(), style=style)
        elif event == "rewind":
            step = data.get("step")
            self.step = step or 0
            where = f"the checkpoint of step {step}" if step is not None else "the beginning"
            self.print(f"attempt {data.get('attempt')} resumes from {where}", style="yellow")
            self._refresh()
        # "checkpoint": its checkpoint_saved event says it in words.

    def _on_status(self, data: dict[str, Any]) -> None:
        status = str(data.get("status", self.status))
        changed = status != self.status
        self.status = status
        progress = data.get("progress") or {}
        if progress.get("step") is not None:
            self.step = int(progress["step"])
        if progress.get("total_steps") is not None:
            self.total = int(progress["total_steps"])
        if status == "running":
            self.eta = progress.get("eta_seconds")
        elif changed and status in ("queued", "preparing"):
            # The wait for a worker and the run's own estimate: the API's, on the run (not on the stream).
            fetched = self.fetch_run()
            self.eta = fetched.eta_seconds
            self.tell_waiting(fetched)
        else:
            self.eta = None
        self.eta_received = time.monotonic()
        self._refresh(status_changed=changed)

    def tell_waiting(self, run: RunPublic) -> None:
        """Print why the queued ``run`` is not taken (its ``waiting_reason``: no worker serves its queue),
        once per follow; nothing when it is not queued or no reason is known."""
        if str(run.status) == "queued" and run.waiting_reason and not self.told_waiting:
            self.told_waiting = True
            self.print(f"waiting: {run.waiting_reason}", style="yellow")

    def _on_metric(self, data: dict[str, Any]) -> None:
        if data.get("split") != "train":
            return  # evaluations are told by their event, with the baseline named
        metrics = data.get("metrics") or {}
        self.train = metrics
        self._training()
        step = data.get("step")
        if isinstance(step, int):
            self.step = max(self.step, step)
        if metrics.get("learning_rate") == 0 and not self.warned_warmup and self._in_warmup(step):
            self.warned_warmup = True
            self.print(self._warmup_note(step), style="cyan")
        self._refresh()

    def _training(self, *, total: Any = None) -> None:
        """The run trains: its training_started event or a training metric arrived. The worker publishes
        the `running` status message with its heartbeat, after the records of that interval, so a short run
        can show its steps before (or without) one: the display says `running` from the first of them."""
        if self.total is None and isinstance(total, int):
            self.total = total
        if self.status in ("queued", "preparing"):
            self.status = "running"
            self.eta = None
            self._refresh(status_changed=True)

    def _warmup_note(self, step: Any) -> str:
        h = self.run.hyperparameters
        peak, ratio = h.get("learning_rate"), h.get("warmup_ratio")
        over = ""
        if isinstance(ratio, (int, float)):
            over = f" over the first warmup_ratio {ratio} of the steps"
            if self.total:
                warmup_steps = math.ceil(ratio * self.total)  # as transformers counts them
                over += f" ({warmup_steps} step{'s' if warmup_steps != 1 else ''} here)"
        to = "its peak" if peak is None else f"learning_rate {fmt(peak)}"
        return (
            f"note: lr 0 at step {step} is the warm-up: it starts the learning rate at 0 and raises it "
            f"linearly to {to}{over}; the first steps barely move the weights."
        )

    def _in_warmup(self, step: Any) -> bool:
        """Whether ``step`` is in the first half of the run (a linear schedule also ends at lr 0)."""
        return not isinstance(step, int) or self.total is None or step <= self.total / 2


def follow_run(client: Client, run_id: str, console: Console) -> int:
    """Show the run live until it ends, then its baseline-vs-final table. Returns the exit code of its
    outcome: 0 succeeded, 1 failed, 2 cancelled (:data:`OUTCOME_EXIT_CODES`), or 130 when the user stopped
    following with Ctrl-C (the run goes on). Raises ApiError (and httpx errors) as the client does."""
    run = client.runs.get(run_id)
    console.print(f"following run {run.id} ({run.name}): {run.status}", markup=False)
    last_event_id: str | None = None
    view = _RunView(console, run, lambda: client.runs.get(run_id))
    view.tell_waiting(run)
    try:
        with view:
            while True:
                for message in client.runs.stream(run_id, last_event_id=last_event_id):
                    last_event_id = message.id
                    view.on_event(message.event, message.data)
                run = client.runs.get(run_id)
                if run.status.is_terminal:
                    break
                time.sleep(1.0)  # the stream ended without the run (the API restarting): follow again
    except KeyboardInterrupt:
        console.print(
            f"stopped following; the run goes on: `bertpt runs follow {run_id}` to watch it again, "
            f"`bertpt runs cancel {run_id}` to stop it",
            markup=False,
        )
        return EXIT_INTERRUPTED
    # A stream that no longer holds the training_started event (expired): the run's events do.
    instances = view.instances if view.instances is not None else eval_instances(client.runs.events(run_id))
    _print_outcome(console, run, instances)
    return OUTCOME_EXIT_CODES.get(str(run.status), 1)


def _print_outcome(console: Console, run: RunPublic, instances: dict[str, int] | None) -> None:
    style = _STATUS_STYLE.get(str(run.status), "bold")
    console.print(Text(f"run {run.id} {run.status}", style=style))
    if run.error is not None:
        console.print(f"error ({run.error.type}): {run.error.message}", style="red", markup=False)
    console.print(baseline_final_table(run, instances=instances))
    if str(run.status) == "succeeded":
        console.print(f"download the model: bertpt runs download {run.id}", markup=False)


def follow_run_json(client: Client, run_id: str) -> int:
    """The run's stream as JSON lines (``{"id", "event", "data"}``) on stdout until the run ends; returns
    the same exit codes as :func:`follow_run`."""
    last_event_id: str | None = None
    while True:
        for message in client.runs.stream(run_id, last_event_id=last_event_id):
            last_event_id = message.id
            click.echo(json.dumps({"id": message.id, "event": message.event, "data": message.data}))
        run = client.runs.get(run_id)
        if run.status.is_terminal:
            return OUTCOME_EXIT_CODES.get(str(run.status), 1)
        time.sleep(1.0)
