"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver, whose versions
match) drives the page served by uvicorn on a free local port. It drops an image, reads the caption,
hovers a word and sees the overlay change, draws a box and reads the region caption, takes a frame from
Chromium's fake camera, and sees a bad upload's message. Skips with one line where Chromium is absent.

    SAVE_PAGE_SCREENSHOT=docs/page.png python -m pytest tests/test_page.py    # refreshes the README's picture
"""

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from captioner import Captioner  # noqa: E402
from data.shapes import make_split  # noqa: E402

SCALE = 12  # the 32-pixel scene is dropped as a 384-pixel PNG


@pytest.fixture(scope="module")
def browser():
    options = Options()
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def drop_file(driver, data, name, kind):
    """Drop a file on the page's drop zone, as a person dragging it from their desktop would."""
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], arguments[1], {type: arguments[2]}));
        const zone = document.getElementById("drop");
        for (const type of ["dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""", base64.b64encode(data).decode(), name, kind)


def test_a_person_captions_a_photo_and_sees_where_the_model_looked(live_server, browser, shapes_model, tmp_path):
    captioner = Captioner.from_pretrained(shapes_model)
    scene = next(s for s in make_split("test", 20, 32) if len(s.objects) == 2)
    image = Image.fromarray(scene.image).resize((32 * SCALE, 32 * SCALE), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    wait = WebDriverWait(browser, 60)
    browser.get(live_server)
    wait.until(lambda d: "2 layers" in d.find_element(By.ID, "model-info").text)

    drop_file(browser, buffer.getvalue(), "scene.png", "image/png")  # the caption
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#caption .word"))
    assert browser.find_element(By.ID, "caption").text == captioner.caption(image)

    overlay = browser.find_element(By.ID, "overlay")  # hovering a word lays its attention over the photo
    before = browser.execute_script("return arguments[0].toDataURL()", overlay)
    words = browser.find_elements(By.CSS_SELECTOR, "#caption .word")
    ActionChains(browser).move_to_element(words[3]).perform()
    wait.until(lambda d: overlay.get_attribute("data-showing") == "word:3:layer:mean")
    assert browser.execute_script("return arguments[0].toDataURL()", overlay) != before
    ActionChains(browser).click(words[3]).perform()  # pinned: every head of the last layer for that word
    heads = browser.find_elements(By.CSS_SELECTOR, "#heads canvas")
    assert len(heads) == captioner.model.decoder.config.heads
    assert words[3].text in browser.find_element(By.ID, "heads-title").text

    x0, y0, x1, y1 = scene.objects[0].box  # dragging a box gives the region's caption
    size = overlay.size
    s = size["width"] / 32
    ActionChains(browser).move_to_element_with_offset(
        overlay, int((x0 - 1) * s - size["width"] / 2), int((y0 - 1) * s - size["height"] / 2)).click_and_hold(
    ).move_by_offset(int((x1 - x0 + 3) * s), int((y1 - y0 + 3) * s)).release().perform()
    wait.until(lambda d: "In the box:" in d.find_element(By.ID, "region-caption").text)
    box = browser.execute_script("return state.region")
    box = tuple(float(f"{v:.1f}") for v in box)  # as the page sends it
    region_caption = browser.find_element(By.ID, "region-caption").text.removeprefix("In the box: ")
    assert region_caption == captioner.caption(image, region=box)

    shots = [tmp_path / "page.png"] + ([Path(os.environ["SAVE_PAGE_SCREENSHOT"])]
                                       if os.environ.get("SAVE_PAGE_SCREENSHOT") else [])
    for shot in shots:
        browser.save_screenshot(str(shot))
    assert (tmp_path / "page.png").stat().st_size > 20_000

    drop_file(browser, b"these are not pixels", "notes.png", "image/png")  # a bad upload: a message, no crash
    wait.until(lambda d: "notes.png: not an image file" in d.find_element(By.ID, "message").text)


def test_the_webcam_view_captions_a_frame(live_server, browser):
    wait = WebDriverWait(browser, 60)
    browser.get(live_server)
    wait.until(lambda d: "layers" in d.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "tab-webcam").click()
    assert browser.find_element(By.ID, "photo-view").get_attribute("hidden")  # the two views switch
    wait.until(lambda d: d.execute_script("return document.getElementById('video').videoWidth") > 0)
    browser.find_element(By.ID, "snap").click()
    wait.until(lambda d: d.execute_script("return state.name") == "webcam.png"
               and d.find_elements(By.CSS_SELECTOR, "#caption .word"))
    assert browser.execute_script("return state.result.width") > 0
    browser.find_element(By.ID, "tab-photo").click()
    assert browser.execute_script("return state.stream") is None  # the camera is let go


def test_the_api_reference_renders_offline_and_the_page_breaks_no_security_rule(live_server, browser):
    """/docs is drawn from /openapi.json by the server's own script (FastAPI's Swagger page needs a CDN), under
    the Content-Security-Policy the server sends; the console shows no refused script, style or image."""
    browser.get(live_server + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "section.endpoint"))
    titles = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "section.endpoint h2")]
    assert "POST /api/caption" in titles and "GET /api/model" in titles, titles
    fields = browser.find_element(By.CSS_SELECTOR, "section.endpoint table").text
    assert "image (required)" in fields and "beam" in fields and "temperature" in fields
    if os.environ.get("SAVE_DOCS_SCREENSHOT"):
        browser.save_screenshot(os.environ["SAVE_DOCS_SCREENSHOT"])
    browser.get(live_server)  # the page itself, under the same policy
    WebDriverWait(browser, 30).until(lambda d: "layers" in d.find_element(By.ID, "model-info").text)
    refused = [entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]]
    assert not refused, refused
