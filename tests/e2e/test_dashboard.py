"""The web dashboard in a real browser: Debian's chromium (``/usr/bin/chromium``, installed by
``scripts/ensure-browser.sh``), driven by Playwright, against ``bertpt serve`` and a ``bertpt worker`` (the
fixtures of conftest.py) training a tiny BERT.

Every wait is on a condition (Playwright's ``expect``, ``wait_for_function``, the fixtures' ``poll``), none
on time. A run watched live is frozen (its training process stopped with SIGSTOP) while the page loads, so
that the points the page then receives can only come from the live stream, and it has steps enough never
to end before the test cancels it. Screenshots go to ``test-artifacts/dashboard/`` (ignored by git), kept
by CI as artifacts.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, expect, sync_playwright

from tests.support import TINY_HYPERPARAMETERS, directory_files, tar_gz

if TYPE_CHECKING:
    from tests.e2e.conftest import ApiServer, Poll, Worker

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
TIMEOUT_MS = 60_000  # a condition of the page that waits on training: a step, a cancel, a run's end
# Watched live, then cancelled: steps enough never to end by itself while the test looks.
LIVE = {**TINY_HYPERPARAMETERS, "max_steps": 5000, "checkpoint_every_steps": 2, "keep_checkpoints": 2}
# Compared with it: the worker tests' tiny run (evaluations at step 0 and at its end).
SHORT = {**TINY_HYPERPARAMETERS, "max_steps": 4}

# The steps of the training loss plotted on a run's page.
TRAIN_STEPS = "document.getElementById('chart-train-loss').data.find((t) => t.uid === 'train-loss').x"
# The number of points of a trace (by uid) of a chart, 0 while there is none.
POINTS = """([chart, uid]) => {
  const trace = document.getElementById(chart)?.data?.find((t) => t.uid === uid);
  return trace ? trace.x.length : 0;
}"""


# -- the browser ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-browser.sh (make test does)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield browser
    browser.close()


class Watched:
    """A page and what it did: the URLs it requested (with their Authorization header) and its uncaught
    errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[tuple[str, str | None]] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _request(self, request: Request) -> None:
        self.requests.append((request.url, request.headers.get("authorization")))

    def _console(self, message: ConsoleMessage) -> None:
        # Refused requests log "Failed to load resource" (a test sends a wrong key on purpose).
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest.fixture
def watched(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Watched]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    watched = Watched(context.new_page())
    yield watched
    watched.screenshot(f"{request.node.name}-end")
    context.close()
    assert watched.errors == [], watched.errors


@pytest.fixture
def api(start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_api()


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        yield client


def _sign_in(page: Page, api: ApiServer, key: str) -> None:
    page.goto(f"{api.base_url}/")
    page.fill("#api-key", key)
    page.click("#sign-in-button")
    expect(page.locator("#runs")).to_be_visible()


def _points(page: Page, chart: str, uid: str) -> int:
    return int(page.evaluate(POINTS, [chart, uid]))


def _wait_for_points(page: Page, chart: str, uid: str, more_than: int) -> int:
    page.wait_for_function(f"(args) => ({POINTS})(args) > {more_than}", arg=[chart, uid], timeout=TIMEOUT_MS)
    return _points(page, chart, uid)


def _assert_key_kept_out_of_urls(watched: Watched, key: str) -> None:
    """The key is in no URL the page asked for or showed, and went with every API request as the header."""
    assert key not in watched.page.url
    assert watched.requests and all(key not in url for url, _ in watched.requests)
    api_requests = [(url, header) for url, header in watched.requests if "/v1/" in url]
    assert api_requests and all(header == f"Bearer {key}" for _, header in api_requests), api_requests
    assert watched.page.evaluate("() => [localStorage.length, document.cookie]") == [0, ""]


# -- without a worker ----------------------------------------------------------------------------------------


def test_sign_in_keeps_the_key_in_the_session_only(watched: Watched, api: ApiServer, api_key: str) -> None:
    page = watched.page
    page.goto(f"{api.base_url}/")
    expect(page).to_have_url(f"{api.base_url}/ui/")

    page.fill("#api-key", "bpt_" + "x" * 43)
    page.click("#sign-in-button")
    expect(page.locator("#sign-in .error")).to_contain_text("unauthorized")
    assert page.evaluate("() => sessionStorage.length") == 0
    watched.requests.clear()  # sent with the wrong key

    page.fill("#api-key", api_key)
    page.click("#sign-in-button")
    expect(page.locator("#runs")).to_contain_text("No runs yet")
    assert page.evaluate("() => sessionStorage.getItem('bertpt.apiKey')") == api_key
    page.click("a[data-section=new]")
    expect(page.locator("#new-run")).to_be_visible()
    watched.screenshot("signed-in-new-run")
    _assert_key_kept_out_of_urls(watched, api_key)

    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_the_form_uploads_a_corpus_and_submits_a_run(
    watched: Watched,
    api: ApiServer,
    client: httpx.Client,
    api_key: str,
    headers: dict[str, str],
    small_corpus: Path,
    tiny_bert_dir: Path,
) -> None:
    """No worker: the run stays queued. A refused value shows the API's message and parameter."""
    archive = tar_gz(directory_files(tiny_bert_dir, folder="tiny-bert"))
    uploaded = client.post("/v1/checkpoints", files={"file": ("tiny-bert.tar.gz", archive)}, headers=headers)
    assert uploaded.status_code == 201, uploaded.text
    base_model = f"checkpoint:{uploaded.json()['id']}"

    page = watched.page
    _sign_in(page, api, api_key)
    page.click("a[data-section=new]")
    expect(page.locator(f"#base-model option[value='{base_model}']")).to_be_attached()
    page.set_input_files("#corpus-file", small_corpus)
    expect(page.locator("#upload-status")).to_contain_text("Uploaded small: 300 documents")
    corpus_id = page.input_value("#corpus")
    assert corpus_id.startswith("corp_")
    page.select_option("#base-model", base_model)

    expect(page.locator("#hp-learning_rate")).to_have_attribute("placeholder", "default 0.00005")
    page.fill("#hp-learning_rate", "-1")
    page.fill("#hp-max_steps", "3")
    page.fill("#hp-max_seq_length", "64")  # the tiny model's position embeddings
    page.click("#submit-run")
    error = page.locator("#form-error .error")
    expect(error).to_contain_text("learning_rate")
    expect(error.locator(".param")).to_have_text("(parameter: hyperparameters.learning_rate)")
    expect(page.locator("#hp-learning_rate")).to_have_class(re.compile(r"\binvalid\b"))
    watched.screenshot("form-error")

    page.fill("#hp-learning_rate", "0.001")
    page.click("#submit-run")
    expect(page).to_have_url(re.compile(r"#/runs/run_[A-Za-z0-9_-]+$"))
    run_id = page.url.rsplit("/", 1)[1]
    expect(page.locator(".run-header .status")).to_have_text("queued")
    run = client.get(f"/v1/runs/{run_id}", headers=headers).json()
    assert (run["base_model"], run["corpus_id"]) == (base_model, corpus_id)
    assert (run["hyperparameters"]["max_steps"], run["hyperparameters"]["learning_rate"]) == (3, 0.001)
    _assert_key_kept_out_of_urls(watched, api_key)


# -- with a worker -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_watched_live_cancelled_downloaded_and_compared(
    watched: Watched,
    api: ApiServer,
    client: httpx.Client,
    start_worker: Callable[..., Worker],
    start_api: Callable[..., ApiServer],
    api_key: str,
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    poll: Poll,
    tmp_path: Path,
) -> None:
    worker = start_worker()
    live_id = submit_run(client, headers, LIVE)
    short_id = submit_run(client, headers, SHORT)  # queued behind it (one worker, one run at a time)
    page = watched.page
    _sign_in(page, api, api_key)
    expect(page.locator(f"#runs tr[data-run-id='{live_id}']")).to_be_visible()
    expect(page.locator(f"#runs tr[data-run-id='{short_id}'] .status")).to_have_text("queued")
    watched.screenshot("runs")

    # Frozen once it has trained a few steps and kept a checkpoint: the page loads what is there.
    def trained() -> bool:
        run = client.get(f"/v1/runs/{live_id}", headers=headers).json()
        kept = client.get(f"/v1/runs/{live_id}/checkpoints", headers=headers).json()
        return (run["progress"].get("step") or 0) >= 3 and bool(kept)

    poll(trained, "the live run trained 3 steps and kept a checkpoint")
    (process,) = poll(lambda: worker.training_processes() or None, "the live run's training process")
    process.suspend()
    try:
        page.click(f"#runs a[href='#/runs/{live_id}']")
        expect(page.locator(".run-header .status")).to_have_text("running")
        loaded = _wait_for_points(page, "chart-train-loss", "train-loss", more_than=0)
        expect(page.locator("#checkpoints tbody tr").first).to_be_visible()
        watched.screenshot("run-frozen")
    finally:
        process.resume()

    # Trained on: its points arrive by the stream (the page reads the metrics once), steps ascending, none
    # twice (the stream repeats what the first read had).
    grown = _wait_for_points(page, "chart-train-loss", "train-loss", more_than=loaded + 2)
    steps = page.evaluate(f"() => {TRAIN_STEPS}")
    assert len(steps) >= grown and steps == sorted(set(steps)), steps
    expect(page.locator("#connection")).to_have_text("● live")
    expect(page.locator("#eta")).to_have_text(re.compile(r"^\d+ (s|min \d\d s|h \d\d min)$"))
    watched.screenshot("run-live")

    # The API killed and started again on its port: the page reconnects with Last-Event-ID and goes on
    # where it was, every step once (logged at every step: 1, 2, 3... with no gap).
    api.kill()
    expect(page.locator("#connection")).to_have_text("reconnecting…")
    before = _points(page, "chart-train-loss", "train-loss")
    start_api(port=api.port)
    expect(page.locator("#connection")).to_have_text("● live", timeout=TIMEOUT_MS)
    _wait_for_points(page, "chart-train-loss", "train-loss", more_than=before + 2)
    steps = page.evaluate(f"() => {TRAIN_STEPS}")
    assert steps == list(range(1, len(steps) + 1)), steps

    # Cancelled from the page.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-run")
    expect(page.locator(".run-header .status")).to_have_text("cancelled", timeout=TIMEOUT_MS)
    expect(page.locator("#events")).to_contain_text("cancelled")
    assert client.get(f"/v1/runs/{live_id}", headers=headers).json()["status"] == "cancelled"
    # Ended, the page shows the whole curve as the server keeps it (the stream ends at the last status).
    params = {"names": "loss", "split": "train"}
    (series,) = client.get(f"/v1/runs/{live_id}/metrics", params=params, headers=headers).json()["series"]
    final = ",".join(str(step) for step, _ in series["points"])
    page.wait_for_function(f"() => {TRAIN_STEPS}.join() === '{final}'")
    watched.screenshot("run-cancelled")

    # A kept checkpoint (the page lists those the API kept: older ones were rotated out), downloaded with
    # the key: a tar of the model's files.
    kept = [c["step"] for c in client.get(f"/v1/runs/{live_id}/checkpoints", headers=headers).json()]
    rows = page.locator("#checkpoints tbody tr")
    expect(rows).to_have_count(len(kept))
    assert [int(step) for step in rows.evaluate_all("(rows) => rows.map((row) => row.dataset.step)")] == kept
    with page.expect_download() as started:
        page.click(f"#download-checkpoint-{kept[-1]}")
    checkpoint = tmp_path / "checkpoint.tar"
    started.value.save_as(checkpoint)
    with tarfile.open(checkpoint) as tar:
        assert any(name.endswith("config.json") for name in tar.getnames())

    # The short run, once it succeeded: its final model, its baseline drawn on the evaluation charts.
    assert wait_for_run(client, headers, short_id)["status"] == "succeeded"
    page.click("a[data-section=runs]")
    page.click(f"#runs a[href='#/runs/{short_id}']")
    expect(page.locator(".run-header .status")).to_have_text("succeeded")
    _wait_for_points(page, "chart-eval-loss", "eval-masked_lm_loss", more_than=1)
    baselines = page.evaluate(
        "() => document.getElementById('chart-eval-loss').layout.shapes.map((s) => s.name)"
    )
    assert baselines == ["in-domain baseline (step 0)"]
    with page.expect_download() as started:
        page.click("#download-model")
    model = tmp_path / "model.tar"
    started.value.save_as(model)
    assert model.stat().st_size > 0 and started.value.suggested_filename.endswith(".tar")

    # Both runs on one chart.
    page.click("a[data-section=runs]")
    for run_id in (live_id, short_id):
        page.check(f"#runs tr[data-run-id='{run_id}'] input[type=checkbox]")
    page.click("#compare-selected")
    expect(page).to_have_url(re.compile(r"#/compare/"))
    plotted = "(document.getElementById('chart-compare-train-loss')?.data ?? []).filter((t) => t.x.length)"
    page.wait_for_function(f"() => {plotted}.length === 2")
    uids = page.evaluate("() => document.getElementById('chart-compare-train-loss').data.map((t) => t.uid)")
    assert sorted(uids) == sorted([live_id, short_id])
    expect(page.locator("#compared-runs tbody tr")).to_have_count(2)
    watched.screenshot("compare")
    _assert_key_kept_out_of_urls(watched, api_key)
