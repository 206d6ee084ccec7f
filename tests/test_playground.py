"""The web playground in a real headless Chromium against a live stack (API, Redis, S3 server, one Celery worker with
the tiny model): upload, draw a sketch, submit, watch the result appear and compare it; follow a long job through
the queue and cancel it; submit with the keyboard alone; phone width; the jobs list and the batch view; an API key
that stays on its own origin. Screenshots of the main states go to `<pytest's temporary folder>/playground/` (or
`CHRONOEDIT_SCREENSHOT_DIR`); with `CHRONOEDIT_DOCS_SCREENSHOT=docs/playground.png` the result state is also saved
there, for the README."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.browser import Browser, missing_browser
from tests.playground_page import (
    Keyboard,
    choose,
    draw_stroke,
    no_horizontal_scroll,
    origins,
    pick_image,
    set_advanced,
    shown_job,
    status_of,
    step_shown,
    submit,
    type_into,
    url_path,
)
from tests.stack import Stack, sample_image, wait_job

pytestmark = [
    pytest.mark.stack,
    pytest.mark.browser,
    pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or ""),
]

SMALL = {"steps": "2", "width": "64", "height": "48"}
"""A job the tiny model finishes in a moment."""


@pytest.fixture(scope="module")
def served(make_stack) -> Stack:
    stack = make_stack("playground")
    stack.start_api()
    stack.start_worker("p1")
    return stack


@pytest.fixture(scope="module")
def local(make_stack, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """As `make run` serves it: local storage, so output URLs are the API's own signed `/v1/files/...` URLs."""
    storage = tmp_path_factory.mktemp("local-storage")
    stack = make_stack(
        "playground-local",
        CHRONOEDIT_STORAGE_BACKEND="local",
        CHRONOEDIT_STORAGE_DIR=str(storage),
        CHRONOEDIT_DEV_MODE="true",
    )
    stack.start_api()
    stack.start_worker("l1")
    return stack


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots of the main states go."""
    chosen = os.environ.get("CHRONOEDIT_SCREENSHOT_DIR")
    folder = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "playground"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium = Browser(downloads=tmp_path_factory.mktemp("downloads"))
    yield chromium
    chromium.quit()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic product photo: a mug on a plain background."""
    image = Image.new("RGB", (320, 240), (236, 232, 226))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((115, 70, 205, 190), radius=10, fill=(40, 90, 160))
    draw.ellipse((195, 100, 235, 160), outline=(40, 90, 160), width=9)
    path = tmp_path_factory.mktemp("photos") / "mug.png"
    image.save(path)
    return path


def test_page_loads_with_no_errors_and_nothing_from_another_origin(served: Stack, browser: Browser) -> None:
    browser.open(served.base_url)
    assert browser.driver.title == "ChronoEdit playground"
    assert origins(browser) == {served.base_url}, "everything comes from the API itself: no CDN"
    assert browser.severe_console_messages() == []
    steps = browser.css("#steps")
    assert (steps.get_attribute("min"), steps.get_attribute("max")) == ("1", "100"), "ranges from /openapi.json"
    assert "multiples of 16" in browser.text("#width-hint")
    assert browser.css("#advanced").get_attribute("open") is None, "advanced parameters are folded away"


def test_sketch_job_from_upload_to_compared_result(served: Stack, browser: Browser, photo: Path, shots: Path) -> None:
    browser.open(served.base_url)
    pick_image(browser, photo)
    choose(browser, "kind", "sketch")
    assert browser.js("return document.querySelector('input[name=mode]:checked').value") == "fast"
    draw_stroke(browser)
    assert browser.text("#stroke-count") == "1 stroke"
    type_into(browser, "#prompt", "a crown")
    set_advanced(browser, **SMALL)
    browser.css("#video").click()
    browser.full_page_screenshot(shots / "1-sketch.png")

    job_id = submit(browser)
    browser.wait(lambda: browser.visible("#result") and browser.js("return after.naturalWidth > 0"), "the result")
    assert status_of(browser) == "succeeded"
    job = served.client().get(f"/v1/edits/{job_id}").json()
    assert job["kind"] == "sketch" and job["params"]["num_inference_steps"] == 2
    assert drawn_line_is_black(served, job_id), "the stroke reached the server as the sketch overlay"

    # the comparison slider, moved with the keyboard: Home shows all "after", End all "before"
    from selenium.webdriver.common.keys import Keys

    browser.css("#compare-range").send_keys(Keys.HOME)
    assert browser.js("return getComputedStyle(after).clipPath") == "inset(0px 0px 0px 0%)"
    browser.css("#compare-range").send_keys(Keys.END)
    assert browser.js("return getComputedStyle(after).clipPath") == "inset(0px 0px 0px 100%)"
    browser.css("#compare-range").send_keys(*[Keys.LEFT] * 35)
    assert browser.js("return compare.style.getPropertyValue('--split')") == "65%"

    # presigned URLs are signed afresh on every read of the job: compare what they point at
    image, video = (url_path(job["outputs"][name]["url"]) for name in ("image", "video"))
    links = {url_path(a.get_attribute("href")) for a in browser.driver.find_elements("css selector", "#downloads a")}
    assert links == {image, video}
    assert url_path(browser.js("return document.getElementById('video-out').src")) == video
    assert str(job["params"]["seed"]) in browser.text("#params")
    browser.wait(lambda: browser.visible(f"#job-{job_id} img"), "the job in the list")
    browser.full_page_screenshot(shots / "2-result.png")
    docs = os.environ.get("CHRONOEDIT_DOCS_SCREENSHOT")
    if docs:  # the README's picture: the window at the top of the page, sketch and result side by side
        browser.scroll_to(None)
        browser.screenshot(Path(docs))
    assert_only_api_and_storage(browser, served, job)

    browser.css("#rerun").click()
    again = shown_job(browser, other_than=job_id)
    browser.wait(lambda: status_of(browser) == "succeeded", "the second run")
    second = served.client().get(f"/v1/edits/{again}").json()
    assert second["params"]["seed"] == job["params"]["seed"] and second["kind"] == "sketch"
    assert drawn_line_is_black(served, again), "run again sends the same strokes"


def drawn_line_is_black(stack: Stack, job_id: str) -> bool:
    """The job's stored input (image with the overlay composited) is black along the drawn line, in the middle."""
    s3 = stack.s3()
    listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"jobs/{job_id}/input/")
    key = listed["Contents"][0]["Key"]
    stored = Image.open(io.BytesIO(s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())).convert("RGB")
    width, height = stored.size
    return all(stored.getpixel((x, height // 2)) == (0, 0, 0) for x in range(width * 3 // 10, width * 7 // 10))


def assert_only_api_and_storage(browser: Browser, stack: Stack, job: dict) -> None:
    """Requests go to the API, or fetch the output files the API handed out; the key never goes elsewhere."""
    storage = {f"{urlsplit(f['url']).scheme}://{urlsplit(f['url']).netloc}" for f in job["outputs"].values()}
    assert origins(browser) <= {stack.base_url, *storage}
    for request in browser.requests:
        if request.url.startswith("http") and not request.url.startswith(stack.base_url):
            assert "authorization" not in request.headers and request.method == "GET", request


def test_follow_a_queued_job_then_cancel_it_while_it_runs(
    served: Stack, browser: Browser, photo: Path, shots: Path
) -> None:
    with served.client() as http:
        blocker = http.post(
            "/v1/edits",
            files={"image": ("p.png", sample_image(), "image/png")},
            data={"prompt": "x", "num_inference_steps": "100", "width": "256", "height": "192"},
        ).json()
        browser.open(served.base_url)
        pick_image(browser, photo)
        type_into(browser, "#prompt", "The user wants to turn the mug bright red.")
        set_advanced(browser, steps="100", width="256", height="192")
        job_id = submit(browser)
        browser.wait(lambda: "Position 1 in the queue" in browser.text("#job-queue"), "the queue position")
        assert status_of(browser) == "queued"
        browser.screenshot(shots / "3-queued.png")
        http.post(f"/v1/edits/{blocker['id']}/cancel")

        browser.wait(lambda: step_shown(browser) >= 2, "denoising progress from the event stream")
        assert browser.js("return document.getElementById('job-progress').value") >= 2
        browser.screenshot(shots / "4-running.png")
        browser.css("#cancel").click()
        browser.wait(lambda: status_of(browser) == "canceled", "the job to be canceled", timeout=60)
        assert browser.text("#job-stage").startswith("Canceled after ")
        assert not browser.visible("#cancel") and not browser.visible("#result")
        assert http.get(f"/v1/edits/{job_id}").json()["status"] == "canceled"
        browser.wait(lambda: "canceled" in browser.text(f"#job-{job_id}"), "the canceled job in the list")
        browser.screenshot(shots / "5-canceled.png")


def test_submit_with_the_keyboard_alone(local: Stack, browser: Browser, photo: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.open(local.base_url)
    pick_image(browser, photo)  # the file dialog itself is the browser's; the test hands it the file
    keys = Keyboard(browser)
    keys.tab_to("kind", Keys.TAB)
    keys.press(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)  # edit -> upscale -> sketch
    assert browser.js("return document.querySelector('input[name=kind]:checked').value") == "sketch"
    keys.tab_to("prompt", Keys.TAB)
    keys.press(*"a hat")
    keys.tab_to("advanced-summary", Keys.TAB)
    keys.press(Keys.ENTER)
    for field, value in (("steps", "1"), ("width", "32"), ("height", "32")):
        keys.tab_to(field, Keys.TAB)
        keys.press(value)
    keys.tab_to("submit", Keys.TAB)
    keys.press(Keys.ENTER)
    job_id = shown_job(browser)
    browser.wait(lambda: browser.js("return after.naturalWidth > 0"), "the result of the job submitted by keyboard")
    job = local.client().get(f"/v1/edits/{job_id}").json()
    assert (job["kind"], job["params"]["prompt"], job["params"]["width"]) == ("sketch", "a hat", 32)
    assert origins(browser) == {local.base_url}, "with local storage even the outputs come from the API"
    download = browser.css("#downloads a")
    assert url_path(download.get_attribute("href")).startswith("/v1/files/") and download.get_attribute("download")


def test_upscale_needs_no_prompt_and_sends_the_scale(served: Stack, browser: Browser, tmp_path: Path) -> None:
    small = tmp_path / "sku.jpg"
    small.write_bytes(sample_image(48, 32, seed=3, fmt="JPEG"))
    browser.open(served.base_url)
    pick_image(browser, small)
    choose(browser, "kind", "upscale")
    assert browser.visible("#scale") and browser.js("return document.getElementById('enhance').disabled")
    assert browser.js("return document.querySelector('input[name=mode][value=turbo]').disabled"), "turbo: edits only"
    type_into(browser, "#scale", "2")
    set_advanced(browser, steps="1", width="", height="")
    job_id = submit(browser)
    browser.wait(lambda: status_of(browser) == "succeeded", "the upscale")
    job = served.client().get(f"/v1/edits/{job_id}").json()
    assert (job["kind"], job["params"]["width"], job["params"]["height"]) == ("upscale", 96, 64)


def test_a_refused_request_says_why_and_keeps_the_form(served: Stack, browser: Browser, photo: Path) -> None:
    browser.open(served.base_url)
    browser.css("#submit").click()
    assert browser.text("#form-error") == "Choose an image first."
    assert browser.js("return document.activeElement.id") == "image-file"
    pick_image(browser, photo)
    type_into(browser, "#prompt", "The user wants to make the mug red.")
    set_advanced(browser, steps="1", width="48", height="")  # the API takes both sizes or neither
    browser.css("#submit").click()
    browser.wait(lambda: "invalid_size" in browser.text("#form-error"), "the API's refusal")
    assert "both `width` and `height`" in browser.text("#form-error")
    assert browser.js("return document.getElementById('job-view').dataset.jobId") is None, "no job was made"
    assert browser.js("return document.getElementById('prompt').value") == "The user wants to make the mug red."
    set_advanced(browser, steps="1", width="", height="")
    choose(browser, "mode", "turbo")  # this stack has no worker with a few-step transformer
    browser.css("#submit").click()
    browser.wait(lambda: "mode_unavailable" in browser.text("#form-error"), "the refusal of turbo")


def test_phone_width_has_no_horizontal_scroll(served: Stack, browser: Browser, photo: Path, shots: Path) -> None:
    with served.client() as http:
        done = wait_job(http, small_job(http)["id"])
    browser.emulate_phone(390, 844)
    try:
        browser.open(served.base_url)
        assert no_horizontal_scroll(browser)
        pick_image(browser, photo)
        choose(browser, "kind", "sketch")
        draw_stroke(browser)
        assert browser.text("#stroke-count") == "1 stroke", "drawing works at phone width too"
        browser.scroll_to(None)
        browser.screenshot(shots / "6-phone-form.png")
        browser.css("#advanced summary").click()
        assert no_horizontal_scroll(browser)
        browser.css(f"#job-{done['id']} button").click()
        browser.wait(lambda: browser.js("return after.naturalWidth > 0"), "the opened job's result")
        assert no_horizontal_scroll(browser)
        browser.scroll_to("#job")
        browser.screenshot(shots / "6-phone-result.png")
    finally:
        browser.stop_emulation()


def small_job(http: httpx.Client, **fields: str) -> dict:
    data = {"prompt": "x", "num_inference_steps": "1", "width": "32", "height": "32", **fields}
    return http.post("/v1/edits", files={"image": ("p.png", sample_image(), "image/png")}, data=data).json()


def test_batch_view_counts_failures_and_downloads_the_manifest(served: Stack, browser: Browser, shots: Path) -> None:
    with served.client() as http:
        items = [{"input_key": upload(http, seed), "reference": f"sku-{seed}"} for seed in (1, 2)]
        # the worker has no FP8 support, so each item fails `fp8_unavailable`: a batch with failed items
        body = {"kind": "edit", "mode": "fast", "prompt": "x", "num_inference_steps": 1, "width": 32, "height": 32}
        created = http.post("/v1/batches", json={**body, "fp8": True, "items": items}).json()
        batch_id = created["batch"]["id"]
        deadline = time.monotonic() + 120
        while http.get(f"/v1/batches/{batch_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    browser.open(served.base_url)
    browser.wait(lambda: browser.visible(f"#batch-{batch_id} button"), "the batch in the list")
    browser.css(f"#batch-{batch_id} button").click()
    browser.wait(lambda: "sku-1" in browser.text("#batch-failed"), "the failed items")
    counts = browser.js(
        "return Object.fromEntries([...document.querySelectorAll('#batch-counts dt')]"
        ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]))"
    )
    assert counts["total"] == "2" and counts["failed"] == "2"
    assert browser.text("#batch-failed").count("fp8_unavailable") == 2
    browser.css("#manifest-jsonl").click()
    manifest = browser.downloads / f"{batch_id}.jsonl"
    browser.wait(manifest.exists, "the manifest download")
    assert len(manifest.read_text().splitlines()) == 2
    browser.css("#batches").location_once_scrolled_into_view  # noqa: B018 - scrolls it into the screenshot
    browser.screenshot(shots / "7-batch.png")


def upload(http: httpx.Client, seed: int) -> str:
    created = http.post("/v1/uploads").json()
    httpx.put(created["upload_url"], content=sample_image(48, 32, seed=seed)).raise_for_status()
    return created["input_key"]


@pytest.fixture(scope="module")
def keyed(make_stack) -> Stack:
    """An API that requires keys (no worker: listing and submitting need none)."""
    stack = make_stack("playground-keys")
    stack.start_api(CHRONOEDIT_AUTH_REQUIRED="true")
    return stack


def test_the_key_is_asked_for_kept_in_the_tab_and_sent_only_to_this_server(keyed: Stack, browser: Browser) -> None:
    key = keyed.create_key("shop")
    with keyed.client() as http:
        job = small_job_with_key(http, key.headers)
    browser.open(keyed.base_url)
    browser.wait(lambda: browser.visible("#notice"), "the notice that a key is needed")
    assert "needs an API key" in browser.text("#notice")
    assert browser.js("return document.getElementById('key-panel').open")
    type_into(browser, "#api-key", key.key)
    browser.css("#key-form button[type=submit]").click()
    browser.wait(lambda: browser.visible(f"#job-{job['id']}"), "the tenant's job in the list")
    assert not browser.visible("#notice")
    assert browser.js("return sessionStorage.getItem('chronoedit.apiKey')") == key.key
    assert browser.js("return localStorage.length") == 0, "the key is kept for this tab only"
    browser.collect()
    keyed_requests = [r for r in browser.requests if r.headers.get("authorization") == f"Bearer {key.key}"]
    assert keyed_requests and all(r.url.startswith(keyed.base_url + "/v1/") for r in keyed_requests)

    browser.driver.refresh()
    browser.wait(lambda: browser.visible(f"#job-{job['id']}"), "the list again, with the kept key")
    browser.css("#key-summary").click()
    browser.css("#key-forget").click()
    browser.wait(lambda: browser.visible("#notice"), "the notice again")
    assert browser.js("return sessionStorage.getItem('chronoedit.apiKey')") is None


def small_job_with_key(http: httpx.Client, headers: dict[str, str]) -> dict:
    data = {"prompt": "x", "num_inference_steps": "1", "width": "32", "height": "32"}
    files = {"image": ("p.png", sample_image(), "image/png")}
    response = http.post("/v1/edits", files=files, data=data, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()
