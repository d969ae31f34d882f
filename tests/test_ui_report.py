"""In a real browser, against a real `prefect server`: the run's summary artifact shows the report's pictures
(the accuracy-vs-size chart and every model's confusion matrix, embedded as data: URIs), one click from the run's
Artifacts tab in the V1 UI, two in the V2 UI (its history first), and one click from the `...-report` link artifact.
Screenshots go to the temporary folder (quantize-ui-report-*.png).

Needs Chromium at /usr/bin/chromium (Debian's `chromium` package) and the Python package playwright (not in
requirements.txt: `pip install playwright`, no `playwright install`); skipped where either is missing."""

import socket
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason="the Python package playwright is not installed (pip install playwright)")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)", allow_module_level=True)

from deployments import local_stack  # noqa: E402
from tests.helpers import run, sdk_config, write_config  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.slow]

LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "quantize-evaluate-sample-model"
CHART = "Top-1 accuracy against file size"
MODELS = ["keras", "keras_quantized", "tflite", "tflite_quantized"]
SCREENSHOTS = Path(tempfile.gettempdir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server alone (no work pool, deployments or worker: the flow runs in this process)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state_dir = tmp_path_factory.mktemp("prefect-ui")
    port = free_port()
    # The UI's pages call the API at PREFECT_UI_API_URL, which is port 4200 unless set, whatever --port says.
    env = {"PREFECT_HOME": str(state_dir / "home"), "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    info = local_stack.start(port=port, state_dir=state_dir, deploy=False, worker=False, env=env)
    try:
        with temporary_settings({PREFECT_API_URL: info["api_url"]}):
            yield info
    finally:
        # The flow ran in this process: its log and event workers send to this server. They are flushed and stopped
        # while it listens; left behind, they would hold up the next drain (prefect_test_harness's) for ever.
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
        local_stack.stop(state_dir)


@pytest.fixture(scope="module")
def artifacts(server, sample_dir, tmp_path_factory) -> dict:
    """The flow run on the sample, reporting to the server: its id and its artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    out = tmp_path_factory.mktemp("ui-run")
    state = run(write_config(out / "configuration.json", sdk_config(sample_dir, out)))
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {"flow_run_id": flow_run_id, **{a.key: a for a in found if a.key}}


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def shown_images(page) -> dict[str, int]:
    """Alt text -> natural width of every image on the page, once the last confusion matrix has loaded."""
    last = page.locator(f'img[alt="Confusion matrix of {MODELS[-1]}"]')
    last.wait_for(state="visible", timeout=60_000)
    page.wait_for_function("() => Array.from(document.images).every(image => image.complete)", timeout=30_000)
    return dict(page.eval_on_selector_all("img[alt]", "images => images.map(i => [i.alt, i.naturalWidth])"))


def assert_the_pictures_are_shown(page, screenshot: str) -> None:
    images = shown_images(page)
    page.locator(f'img[alt="Confusion matrix of {MODELS[0]}"]').scroll_into_view_if_needed()  # V1 scrolls inside
    page.screenshot(path=str(SCREENSHOTS / screenshot), full_page=True)
    for alt in [CHART] + [f"Confusion matrix of {model}" for model in MODELS]:
        assert images.get(alt, 0) > 0, (alt, images)


def test_in_the_v1_ui_one_click_on_the_runs_summary_artifact_shows_the_chart_and_the_confusion_matrices(
    server, artifacts, page
):
    page.goto(f"{server['ui_url']}/runs/flow-run/{artifacts['flow_run_id']}")
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()

    page.get_by_text(KEY, exact=True).click()

    assert_the_pictures_are_shown(page, "quantize-ui-report-v1.png")


def test_in_the_v2_ui_the_summary_artifact_shows_them_too_from_its_history(server, artifacts, page):
    """V2 (what a new browser gets at /) opens an artifact's key at its history: one more click, on this run's."""
    page.goto(f"{server['ui_url']}/v2/runs/flow-run/{artifacts['flow_run_id']}?tab=Artifacts")
    page.get_by_text(KEY, exact=True).click()

    page.get_by_role("link", name=str(artifacts[KEY].id)[:8], exact=True).click()

    assert_the_pictures_are_shown(page, "quantize-ui-report-v2.png")


def test_the_report_link_artifact_opens_the_pictures_in_one_click(server, artifacts, page):
    page.goto(f"{server['ui_url']}/artifacts/artifact/{artifacts[f'{KEY}-report'].id}")

    with page.context.expect_page() as opened:  # V1 opens a markdown link in a new tab
        page.get_by_role("link", name=f"Charts and confusion matrices: the summary artifact {KEY}").click()

    summary = opened.value
    summary.wait_for_load_state()
    assert summary.url.endswith(f"/artifacts/artifact/{artifacts[KEY].id}")
    assert_the_pictures_are_shown(summary, "quantize-ui-report-link.png")


def test_the_summary_artifact_stays_small(artifacts):
    size = len(artifacts[KEY].data.encode())

    assert size < 60_000, f"{size:,} bytes"
