"""The playground page as a user works it, for the browser tests: pick an image, choose, type, draw, submit, read
what the page shows, and move through it with the keyboard alone."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from tests.browser import Browser


def pick_image(browser: Browser, file: Path) -> None:
    browser.css("#image-file").send_keys(str(file))
    browser.wait(lambda: browser.visible("#stage") and browser.js("return source.naturalWidth > 0"), "the preview")


def choose(browser: Browser, name: str, value: str) -> None:
    browser.css(f"input[name='{name}'][value='{value}']").click()


def type_into(browser: Browser, selector: str, text: str) -> None:
    element = browser.css(selector)
    element.clear()
    element.send_keys(text)


def set_advanced(browser: Browser, steps: str, width: str, height: str) -> None:
    if not browser.js("return advanced.open"):
        browser.css("#advanced summary").click()
    type_into(browser, "#steps", steps)
    type_into(browser, "#width", width)
    type_into(browser, "#height", height)


def draw_stroke(browser: Browser) -> None:
    """Press, drag across the middle of the canvas, release: one stroke, as a mouse draws it."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.css("#sketch")
    width = canvas.size["width"]
    chain = ActionChains(browser.driver).move_to_element_with_offset(canvas, -width // 4, 0).click_and_hold()
    for _ in range(10):
        chain.move_by_offset(width // 20, 0)
    chain.release().perform()


def submit(browser: Browser) -> str:
    """Click Submit; the id of the job the result panel then follows."""
    before = browser.js("return document.getElementById('job-view').dataset.jobId || ''")
    browser.css("#submit").click()
    return shown_job(browser, other_than=before)


def shown_job(browser: Browser, other_than: str = "") -> str:
    script = "return document.getElementById('job-view').dataset.jobId || ''"
    return browser.wait(lambda: (browser.js(script) or "") not in ("", other_than) and browser.js(script), "a job")


def status_of(browser: Browser) -> str:
    return browser.text("#job-status")


def origins(browser: Browser) -> set[str]:
    """Where the page's network requests went (blob: and data: URLs are the page's own memory)."""
    browser.collect()
    urls = [urlsplit(r.url) for r in browser.requests]
    return {f"{url.scheme}://{url.netloc}" for url in urls if url.scheme in ("http", "https")}


def url_path(url: str) -> str:
    return urlsplit(url).path


def step_shown(browser: Browser) -> int:
    text = browser.text("#job-stage")
    return int(text.split("step ")[1].split(" ")[0]) if text.startswith("Denoising: step") else 0


def no_horizontal_scroll(browser: Browser) -> bool:
    return bool(browser.js("return document.documentElement.scrollWidth <= window.innerWidth"))


class Keyboard:
    """Key presses sent to whatever has the focus, as a keyboard user would."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser

    def press(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.browser.driver).send_keys(*keys).perform()

    def focused(self) -> str:
        return str(self.browser.js("const e = document.activeElement; return e.id || e.name || ''"))

    def tab_to(self, name: str, key: str, limit: int = 40) -> None:
        for _ in range(limit):
            if self.focused() == name:
                return
            self.press(key)
        raise AssertionError(f"Tab never reached {name}; focus is on {self.focused()!r}")
