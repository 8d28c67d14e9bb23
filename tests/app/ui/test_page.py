"""The dashboard's page (app/ui/static/) in a real browser, Debian's chromium driven by Playwright, its
requests answered by the app in process (the ``client`` fixture; Playwright hands each request of the page
to it): what shows before sign-in, the icon, the "More" button, and the charts' layout.

Runs and metric points are rows inserted directly; no run trains, no live stream is opened (the runs shown
have ended). tests/e2e/test_dashboard.py drives the same page against real servers and a real run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from sqlalchemy.orm import Session

from app.runs.states import RunStatus
from tests.support import TenantKey, insert_metric_points, make_run, noisy_points

CHROMIUM = Path("/usr/bin/chromium")
ORIGIN = "http://bertpt.test"
# Headers the app's response had for the bytes on the wire; the client hands over the decoded body.
_HOP_HEADERS = {"content-encoding", "content-length", "transfer-encoding", "connection"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-browser.sh (make test does)")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, client: TestClient) -> Iterator[Page]:
    """A page whose every request to :data:`ORIGIN` is answered by the app in process."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)

    def answer(route: Route) -> None:
        request = route.request
        path = request.url.removeprefix(ORIGIN)
        response = client.request(
            request.method, path, headers=request.headers, content=request.post_data_buffer
        )
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
        route.fulfill(status=response.status_code, headers=headers, body=response.content)

    context.route(f"{ORIGIN}/**", answer)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page: Page, key: str) -> None:
    page.goto(f"{ORIGIN}/ui/")
    page.fill("#api-key", key)
    page.click("#sign-in-button")
    expect(page.locator("#runs")).to_be_visible()


def ended_run(session: Session, alice: TenantKey, name: str, *, evaluations: bool = True) -> str:
    """A succeeded run of 30 steps with its training loss and, when ``evaluations``, the masked-LM loss of
    both evaluated splits at steps 0, 15 and 30."""
    run = make_run(session, alice.tenant, name=name, status=RunStatus.SUCCEEDED)
    insert_metric_points(session, run.id, "train", "loss", noisy_points(range(1, 31)))
    if evaluations:
        for seed, split in enumerate(("eval", "reference")):
            insert_metric_points(session, run.id, split, "masked_lm_loss", noisy_points((0, 15, 30), seed))
    return run.id


def box(page: Page, selector: str) -> dict[str, Any]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not drawn"
    return dict(found)


def test_before_sign_in_only_the_form_shows_and_the_icon_is_ours(page: Page) -> None:
    page.goto(f"{ORIGIN}/ui/")
    expect(page.locator("#sign-in")).to_be_visible()
    for hidden in ("#nav", "#sign-out"):
        expect(page.locator(hidden)).to_be_hidden()
    icon = page.evaluate("() => document.querySelector('link[rel=icon]').href")
    assert icon == f"{ORIGIN}/ui/favicon.svg"
    fetched = page.evaluate(
        "async (url) => { const r = await fetch(url);"
        " return [r.status, r.headers.get('content-type'), (await r.text()).slice(0, 4)]; }",
        icon,
    )
    assert fetched == [200, "image/svg+xml", "<svg"]


def test_more_shows_only_when_the_api_has_another_page(
    page: Page, session: Session, alice: TenantKey
) -> None:
    for index in range(4):
        make_run(session, alice.tenant, name=f"run {index}")
    sign_in(page, alice.key)
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(4)
    expect(page.locator("#more-runs")).to_be_hidden()
    expect(page.locator("#nav")).to_be_visible()

    for index in range(4, 51):  # one more than the page holds (50)
        make_run(session, alice.tenant, name=f"run {index}")
    page.reload()
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(50)
    expect(page.locator("#more-runs")).to_be_visible()
    page.click("#more-runs")
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(51)
    expect(page.locator("#more-runs")).to_be_hidden()


def test_an_evaluation_charts_legend_is_below_its_axis_title(
    page: Page, session: Session, alice: TenantKey
) -> None:
    run_id = ended_run(session, alice, "charted")
    sign_in(page, alice.key)
    page.goto(f"{ORIGIN}/ui/#/runs/{run_id}")
    chart = "#chart-eval-loss"
    page.wait_for_function(f"() => document.querySelector('{chart}')?.data?.length === 2")
    title, legend = box(page, f"{chart} .xtitle"), box(page, f"{chart} .legend")
    ticks = box(page, f"{chart} .xtick")
    assert ticks["y"] + ticks["height"] <= title["y"]  # the tick labels, then the axis title
    assert title["y"] + title["height"] <= legend["y"], (title, legend)  # then the legend, under it
    plot = box(page, f"{chart} .main-svg")
    assert legend["y"] + legend["height"] <= plot["y"] + plot["height"]  # inside the chart's box


def test_a_compared_chart_with_one_runs_line_still_names_it(
    page: Page, session: Session, alice: TenantKey
) -> None:
    """Only the first run has the evaluation: its chart has one line, and a legend that says whose."""
    first = ended_run(session, alice, "with evaluations")
    second = ended_run(session, alice, "without", evaluations=False)
    sign_in(page, alice.key)
    page.goto(f"{ORIGIN}/ui/#/compare/{first},{second}")
    chart = "#chart-compare-eval-loss"
    page.wait_for_function(f"() => document.querySelector('{chart}')?.data?.length === 1")
    assert page.evaluate(f"() => document.querySelector('{chart}')._fullLayout.showlegend") is True
    expect(page.locator(f"{chart} .legend .legendtext")).to_have_text("with evaluations")
