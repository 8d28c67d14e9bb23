"""A run's curves as a picture (GET /v1/runs/{id}/plot.png and .svg, app/runs/plots.py): the series drawn,
the step-0 baselines dashed, the title, the size asked for; another tenant's run, a run with no metric yet."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from matplotlib.backends.backend_agg import FigureCanvasAgg
from sqlalchemy.orm import Session

from app.runs.plots import MIN_ACCURACY_SPAN, plot_figure, render_plot
from app.runs.schemas import MetricSeries
from app.runs.states import RunStatus
from tests.support import TenantKey, assert_error, insert_metric_points, make_run, noisy_points

SVG = "{http://www.w3.org/2000/svg}"
EVAL_NAMES = ("masked_lm_loss", "masked_lm_accuracy", "perplexity", "next_sentence_accuracy")


@pytest.fixture
def plotted_run(session: Session, alice: TenantKey) -> str:
    """A succeeded run with every series the picture draws: training loss and its terms, the learning
    rate, and evaluations of the eval and reference splits from step 0 (the baseline) on."""
    run = make_run(session, alice.tenant, name="pubmed-minilm", status=RunStatus.SUCCEEDED)
    for seed, name in enumerate(("loss", "masked_lm_loss", "next_sentence_loss")):
        insert_metric_points(session, run.id, "train", name, noisy_points(range(1, 301), seed=seed))
    insert_metric_points(
        session, run.id, "train", "learning_rate", [(s, 5e-5 * min(1, s / 20)) for s in range(1, 301)]
    )
    for split in ("eval", "reference"):
        for seed, name in enumerate(EVAL_NAMES):
            insert_metric_points(session, run.id, split, name, noisy_points(range(0, 301, 100), seed=seed))
    return run.id


def svg_tree(content: bytes) -> ET.Element:
    return ET.fromstring(content)


def svg_ids(root: ET.Element) -> set[str]:
    return {element.attrib["id"] for element in root.iter() if "id" in element.attrib}


def svg_texts(root: ET.Element) -> str:
    return " ".join("".join(element.itertext()) for element in root.iter(f"{SVG}text"))


def png_size(content: bytes) -> tuple[int, int]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    assert content[12:16] == b"IHDR"
    width, height = struct.unpack(">II", content[16:24])
    return width, height


def test_the_png_is_a_png_of_the_size_asked_for(
    client: TestClient, alice: TenantKey, plotted_run: str
) -> None:
    response = client.get(f"/v1/runs/{plotted_run}/plot.png?width=800&height=600", headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (800, 600)

    default = client.get(f"/v1/runs/{plotted_run}/plot.png", headers=alice.headers)
    assert png_size(default.content) == (1200, 900)


def test_the_svg_draws_every_series_and_its_baseline(
    client: TestClient, alice: TenantKey, plotted_run: str
) -> None:
    response = client.get(f"/v1/runs/{plotted_run}/plot.svg", headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    root = svg_tree(response.content)
    ids = svg_ids(root)
    for name in ("loss", "masked_lm_loss", "next_sentence_loss", "learning_rate"):
        assert f"train/{name}" in ids
    for split in ("eval", "reference"):
        for name in EVAL_NAMES:
            assert f"{split}/{name}" in ids
            assert f"{split}/{name}/baseline" in ids  # the step-0 value, dashed
    text = svg_texts(root)
    assert f"pubmed-minilm  ·  {plotted_run}  ·  succeeded" in text  # the title
    for label in ("eval baseline (step 0)", "reference baseline (step 0)", "general-domain reference"):
        assert label in text
    assert "Next-sentence accuracy" in text
    assert "not recorded" not in text


def test_another_tenants_run_is_not_found(
    client: TestClient, alice: TenantKey, bob: TenantKey, plotted_run: str
) -> None:
    for plot_format in ("png", "svg"):
        response = client.get(f"/v1/runs/{plotted_run}/plot.{plot_format}", headers=bob.headers)
        assert_error(response, 404, "not_found")


def test_a_run_without_metrics_is_a_conflict(client: TestClient, session: Session, alice: TenantKey) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.QUEUED)
    error = assert_error(client.get(f"/v1/runs/{run.id}/plot.png", headers=alice.headers), 409, "conflict")
    assert "no metrics yet" in error["message"] and "queued" in error["message"]


def test_a_run_that_ended_without_metrics_says_it_ended(
    client: TestClient, session: Session, alice: TenantKey
) -> None:
    """Cancelled before it ran: it will never have metrics, so the message does not promise them."""
    run = make_run(session, alice.tenant, status=RunStatus.CANCELLED)
    error = assert_error(client.get(f"/v1/runs/{run.id}/plot.svg", headers=alice.headers), 409, "conflict")
    assert "ended (cancelled) without any metrics" in error["message"]
    assert "once it is running" not in error["message"] and "yet" not in error["message"]


@pytest.mark.parametrize("query", ["width=10", "width=100000", "height=0", "height=abc"])
def test_a_size_out_of_bounds_is_refused(
    client: TestClient, alice: TenantKey, plotted_run: str, query: str
) -> None:
    response = client.get(f"/v1/runs/{plotted_run}/plot.png?{query}", headers=alice.headers)
    assert_error(response, 422, "validation_error", query.split("=")[0])


def series(split: str, name: str, points: list[tuple[int, float | None]]) -> MetricSeries:
    return MetricSeries(name=name, split=split, points=points)


def test_missing_series_gaps_and_late_evaluations() -> None:
    """A run without NSP, with a non-finite value (null) and an eval series that starts after step 0 (a
    resumed run whose baseline is not in the range): the panels say what is missing, no baseline is
    made up."""
    content = render_plot(
        [
            series("train", "loss", [(1, 3.0), (2, None), (3, 2.5)]),
            series("eval", "masked_lm_loss", [(100, 2.0), (200, 1.9)]),
        ],
        title="t",
        plot_format="svg",
        width=800,
        height=600,
    )
    root = svg_tree(content)
    ids = svg_ids(root)
    assert {"train/loss", "eval/masked_lm_loss"} <= ids
    assert "eval/masked_lm_loss/baseline" not in ids
    assert "train/next_sentence_loss" not in ids
    # The learning rate, masked-LM accuracy, perplexity and next-sentence accuracy.
    assert svg_texts(root).count("not recorded for this run") == 4


def test_a_run_name_is_drawn_as_written_not_as_mathtext() -> None:
    """A name with dollars (``$\\frac$`` is invalid mathtext) is the title's text, not a failed drawing."""
    name = r"cost $\frac$ run"
    for plot_format in ("png", "svg"):
        content = render_plot(
            [series("train", "loss", [(1, 3.0), (2, 2.5)])],
            title=name,
            plot_format=plot_format,
            width=640,
            height=480,
        )
        if plot_format == "svg":
            assert name in svg_texts(svg_tree(content))


def test_the_same_series_give_the_same_bytes_from_any_thread() -> None:
    drawn: list[Any] = [
        series("train", "loss", [(step, 3.0 - step / 1000) for step in range(1, 500)]),
        series("eval", "masked_lm_loss", [(0, 2.5), (250, 2.2), (499, 2.1)]),
    ]

    def render(plot_format: Any) -> bytes:
        return render_plot(drawn, title="same", plot_format=plot_format, width=640, height=480)

    for plot_format in ("png", "svg"):
        alone = render(plot_format)
        with ThreadPoolExecutor(max_workers=4) as pool:
            together = list(pool.map(render, [plot_format] * 4))
        assert together == [alone] * 4


def panels(drawn: list[MetricSeries]) -> dict[str, Any]:
    figure = plot_figure(drawn, title="t", width=800, height=600)
    return {ax.get_title(): ax for ax in figure.axes}


def evaluations(name: str, values: list[float]) -> list[MetricSeries]:
    steps = range(0, len(values))
    return [series(split, name, list(zip(steps, values, strict=True))) for split in ("eval", "reference")]


def test_steps_are_whole_numbers_even_for_a_run_of_three_steps() -> None:
    """matplotlib's own ticks for steps 1..3 would be 0.5, 1, 1.5..."""
    axes = panels([series("train", "loss", [(1, 3.0), (2, 2.9), (3, 2.7)])])
    for title in ("Training loss", "Next-sentence accuracy"):
        ticks = list(axes[title].get_xticks())
        assert ticks and all(float(tick).is_integer() for tick in ticks), (title, ticks)


def test_an_accuracy_axis_never_magnifies_noise() -> None:
    """0.12 -> 0.125 -> 0.118 is noise: the axis spans MIN_ACCURACY_SPAN around it, within [0, 1]."""
    axes = panels(
        evaluations("masked_lm_accuracy", [0.12, 0.125, 0.118])
        + evaluations("next_sentence_accuracy", [0.99, 1.0])
    )
    low, high = axes["Masked-LM accuracy"].get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN - 1e-9 and low <= 0.118 and high >= 0.125
    low, high = axes["Next-sentence accuracy"].get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN - 1e-9 and high <= 1.0 and low <= 0.99
    # A real change keeps its own span.
    wide = panels(evaluations("masked_lm_accuracy", [0.1, 0.4]))["Masked-LM accuracy"].get_ylim()
    assert wide[1] - wide[0] > 0.3


def test_perplexity_is_on_a_log_scale_whatever_its_range() -> None:
    assert panels(evaluations("perplexity", [20.0, 18.0]))["Perplexity"].get_yscale() == "log"
    assert panels(evaluations("perplexity", [3000.0, 40.0]))["Perplexity"].get_yscale() == "log"


def test_the_evaluation_legend_is_one_under_the_panels_not_over_the_curves() -> None:
    drawn = [
        series("train", "loss", [(1, 3.0), (2, 2.5)]),
        series("train", "masked_lm_loss", [(1, 2.5), (2, 2.0)]),
        *evaluations("masked_lm_loss", [3.0, 2.5]),
        *evaluations("masked_lm_accuracy", [0.1, 0.2]),
    ]
    figure = plot_figure(drawn, title="t", width=800, height=600)
    by_title = {ax.get_title(): ax for ax in figure.axes}
    for title in ("Masked-LM loss", "Masked-LM accuracy", "Perplexity", "Next-sentence accuracy"):
        assert by_title[title].get_legend() is None, title
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == [
        "held-out domain text (eval)",
        "eval baseline (step 0)",
        "general-domain reference (reference)",
        "reference baseline (step 0)",
    ]
    # Below every panel once laid out.
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    top = legend.get_window_extent(renderer).y1
    assert all(top <= ax.get_window_extent(renderer).y0 for ax in figure.axes)
    assert by_title["Training loss"].get_legend() is not None  # its own lines only, where they are not
