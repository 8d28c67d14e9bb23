"""A run's curves as a picture for a report (``GET /v1/runs/{id}/plot.png`` and ``.svg``): the training loss
with its masked-LM and next-sentence terms, the learning rate, and the evaluations (masked-LM loss and
accuracy, perplexity, next-sentence accuracy) of the held-out domain text (``eval``) beside the
general-domain reference corpus (``reference``), each with its step-0 value, the base model's, as a dashed
line: forgetting shows as a reference curve leaving its baseline. The evaluation panels share one legend,
under the panels (never over a curve); steps are whole numbers; an accuracy axis spans at least
:data:`MIN_ACCURACY_SPAN` (a change of 0.005 does not fill the panel like a fall); perplexity is always on a
log scale, so that pictures of different runs read alike.

The series are those of ``GET /v1/runs/{id}/metrics`` (:mod:`app.runs.metric_series`, downsampled the same
way); :func:`render_plot` turns them into bytes and knows nothing of runs or requests.

matplotlib imports numpy, which the API otherwise never loads (see ``[tool.importlinter]`` in
pyproject.toml): it is imported here, inside :func:`render_plot`, at the first plot a process draws. Figures
are built with its object API (``Figure``, never pyplot's global state), one per call, and drawn one at a
time per process (matplotlib does not promise that two figures can be drawn at once in two threads).
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.orm import Session

from app.errors import Conflict
from app.models import Tenant
from app.runs.metric_series import MetricBucketCache, MetricsQuery, get_metrics
from app.runs.schemas import MetricSeries
from app.runs.service import get_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_HEIGHT",
    "DEFAULT_WIDTH",
    "MAX_HEIGHT",
    "MAX_WIDTH",
    "MEDIA_TYPES",
    "MIN_ACCURACY_SPAN",
    "MIN_HEIGHT",
    "MIN_WIDTH",
    "PANELS",
    "Panel",
    "PlotFormat",
    "plot_figure",
    "plot_run",
    "render_plot",
]

PlotFormat = Literal["png", "svg"]
MEDIA_TYPES: dict[PlotFormat, str] = {"png": "image/png", "svg": "image/svg+xml"}

# The picture's size in pixels at DPI dots per inch (an SVG is the same drawing, width / DPI inches wide).
DEFAULT_WIDTH, MIN_WIDTH, MAX_WIDTH = 1200, 480, 3200
DEFAULT_HEIGHT, MIN_HEIGHT, MAX_HEIGHT = 900, 360, 2400
DPI = 100
# Points per series: the curves of a long run stay smooth at any width allowed, and the file small.
POINTS_PER_SERIES = 1000
# The narrowest span of an accuracy axis (accuracies are shares in [0, 1]): the noise of a small evaluation
# set must not look like a trend.
MIN_ACCURACY_SPAN = 0.05

# Where each split's curves are drawn, and how.
_SPLIT_STYLE = {
    "eval": ("tab:blue", "held-out domain text (eval)"),
    "reference": ("tab:orange", "general-domain reference (reference)"),
}
_TRAIN_STYLE = {
    "loss": ("black", "loss (total)"),
    "masked_lm_loss": ("tab:blue", "masked_lm_loss"),
    "next_sentence_loss": ("tab:green", "next_sentence_loss"),
    "learning_rate": ("tab:purple", "learning_rate"),
}


@dataclass(frozen=True)
class Panel:
    """One chart of the picture: the metric ``names`` of ``splits`` (train: one line per name; eval and
    reference: one line per split, and its step-0 baseline dashed)."""

    title: str
    names: tuple[str, ...]
    splits: tuple[str, ...]
    # Always a log scale (perplexity, exp of the loss: it may start in the thousands and end in tens).
    log_scale: bool = False
    # The narrowest span of the value axis, centred on the values (accuracies: MIN_ACCURACY_SPAN).
    min_span: float | None = None


PANELS: tuple[Panel, ...] = (
    Panel("Training loss", ("loss", "masked_lm_loss", "next_sentence_loss"), ("train",)),
    Panel("Learning rate", ("learning_rate",), ("train",)),
    Panel("Masked-LM loss", ("masked_lm_loss",), ("eval", "reference")),
    Panel("Masked-LM accuracy", ("masked_lm_accuracy",), ("eval", "reference"), min_span=MIN_ACCURACY_SPAN),
    Panel("Perplexity", ("perplexity",), ("eval", "reference"), log_scale=True),
    Panel(
        "Next-sentence accuracy",
        ("next_sentence_accuracy",),
        ("eval", "reference"),
        min_span=MIN_ACCURACY_SPAN,
    ),
)

_render_lock = threading.Lock()


def plot_run(
    session: Session,
    tenant: Tenant,
    run_id: str,
    *,
    plot_format: PlotFormat,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    cache: MetricBucketCache,
) -> bytes:
    """The tenant's run's curves as a PNG or an SVG of ``width`` x ``height`` pixels, titled with its name,
    id and status. NotFound (404) for a run this tenant does not have; Conflict (409) when it has no
    metric: not yet (the first come with the evaluation of the base model, at step 0), or never (it ended
    before)."""
    run = get_run(session, tenant, run_id)
    metrics = get_metrics(session, tenant, run.id, MetricsQuery(max_points=POINTS_PER_SERIES), cache=cache)
    if not metrics.series:
        if run.status.is_terminal:
            raise Conflict(
                f"run {run.id!r} ended ({run.status.value}) without any metrics, so there is nothing to "
                "plot: it stopped before the evaluation of the base model at step 0"
            )
        raise Conflict(
            f"run {run.id!r} ({run.status.value}) has no metrics yet, so there is nothing to plot: its first "
            "points come with the evaluation of the base model at step 0, once it is running"
        )
    title = f"{run.name}  ·  {run.id}  ·  {run.status.value}"
    return render_plot(metrics.series, title=title, plot_format=plot_format, width=width, height=height)


def render_plot(
    series: Sequence[MetricSeries], *, title: str, plot_format: PlotFormat, width: int, height: int
) -> bytes:
    """The :data:`PANELS` of ``series`` (as ``GET /v1/runs/{id}/metrics`` lists them; null values are gaps)
    as ``plot_format`` bytes, ``width`` x ``height`` pixels at :data:`DPI` (the figure of
    :func:`plot_figure`). The same series give the same bytes."""
    _load_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    with _render_lock:
        figure = plot_figure(series, title=title, width=width, height=height)
        buffer = io.BytesIO()
        if plot_format == "png":
            FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})
        else:
            # No date: the same series give the same file.
            FigureCanvasSVG(figure).print_svg(buffer, metadata={"Date": None})
        return buffer.getvalue()


def plot_figure(series: Sequence[MetricSeries], *, title: str, width: int, height: int) -> Figure:
    """The matplotlib figure :func:`render_plot` draws: one axes per panel of :data:`PANELS`, in order and
    titled as they are. Lines carry the SVG id ``<split>/<name>``, baselines ``<split>/<name>/baseline``; a
    panel none of whose series exists says so. Not thread-safe: :func:`render_plot` draws one at a time."""
    _load_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    by_key = {(s.split, s.name): s for s in series}
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    # The title holds the run's name, the user's: text as written, never mathtext ("$\frac$" in a name
    # would fail the drawing).
    figure.suptitle(title, fontsize="large", parse_math=False)
    axes = figure.subplots(3, 2, sharex=True, squeeze=False).flatten()
    # The evaluation panels' one legend (the same splits and baselines in each), under the panels.
    legend: dict[str, Any] = {}
    for panel, ax in zip(PANELS, axes, strict=True):
        _draw_panel(ax, panel, by_key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        if panel.splits != ("train",):
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
    for ax in axes[-2:]:
        ax.set_xlabel("optimizer step")
    if legend:
        figure.legend(
            list(legend.values()), list(legend), loc="outside lower center", ncols=4, fontsize="small"
        )
    return figure


def _draw_panel(ax: Axes, panel: Panel, by_key: dict[tuple[str, str], MetricSeries]) -> None:
    ax.set_title(panel.title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    lines = 0
    drawn: list[float] = []
    for split in panel.splits:
        for name in panel.names:
            found = by_key.get((split, name))
            if found is None or not found.points:
                continue
            steps = [step for step, _ in found.points]
            values = [math.nan if value is None else value for _, value in found.points]
            if split == "train":
                color, label = _TRAIN_STYLE.get(name, ("tab:gray", name))
                ax.plot(steps, values, color=color, label=label, linewidth=1.2, gid=f"{split}/{name}")
            else:
                color, label = _SPLIT_STYLE[split]
                ax.plot(
                    steps,
                    values,
                    color=color,
                    label=label,
                    linewidth=1.5,
                    marker="o",
                    markersize=3,
                    gid=f"{split}/{name}",
                )
                first_step, baseline = found.points[0]
                if first_step == 0 and baseline is not None and math.isfinite(baseline):
                    ax.axhline(
                        baseline,
                        color=color,
                        linestyle="--",
                        linewidth=1.0,
                        alpha=0.8,
                        label=f"{split} baseline (step 0)",
                        gid=f"{split}/{name}/baseline",
                    )
            drawn.extend(value for value in values if math.isfinite(value))
            lines += 1
    if not lines:
        ax.text(
            0.5,
            0.5,
            "not recorded for this run",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="gray",
        )
        ax.set_yticks([])
        return
    low, high = min(drawn, default=0.0), max(drawn, default=0.0)
    if panel.log_scale and low > 0:
        ax.set_yscale("log")
    if panel.min_span is not None and high - low < panel.min_span:
        # Centred on the values, within [0, 1] (a share).
        bottom = min(max(0.0, (low + high - panel.min_span) / 2), 1.0 - panel.min_span)
        ax.set_ylim(bottom, bottom + panel.min_span)
    if lines > 1 and panel.splits == ("train",):
        # Training curves only (no line across the whole panel): the corner they leave free.
        ax.legend(fontsize="small", loc="best")


_loaded = threading.Event()
_load_lock = threading.Lock()


def _load_matplotlib() -> None:
    """Import matplotlib once per process, and have its SVGs keep text as text (searchable, selectable),
    with ids that do not change from one drawing to the next. These are process-wide settings of
    matplotlib's; nothing else in the API draws."""
    if _loaded.is_set():
        return
    with _load_lock:
        if _loaded.is_set():
            return
        import matplotlib

        matplotlib.rcParams["svg.fonttype"] = "none"
        matplotlib.rcParams["svg.hashsalt"] = "bertpt"
        _loaded.set()
