"""The ``fcnseg serve`` page in a real headless Chromium (Debian's ``chromium`` package + Playwright)."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg import viz
from fcnseg.api import load
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.synthetic import render_scene
from fcnseg.serve import make_server

CHROMIUM = Path(os.environ.get("FCNSEG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
H, W = 90, 120

if not CHROMIUM.is_file():
    pytest.skip(f"browser test needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)",
                allow_module_level=True)
sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="browser test needs the playwright package (pip install playwright)"
).sync_playwright

READ_CANVAS = """() => {
    const canvas = document.getElementById("overlay");
    return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
}"""


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    return load(tiny_checkpoint, device="cpu")

@pytest.fixture(scope="module")
def server(segmenter):
    server = make_server(segmenter, quiet=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def page(tmp_path):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1100, "height": 640}, accept_downloads=True)
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()


def canvas_rgb(page):
    rgba = np.asarray(page.evaluate(READ_CANVAS), dtype=np.uint8).reshape(H, W, 4)
    assert (rgba[:, :, 3] == 255).all()
    return rgba[:, :, :3]


def test_upload_overlay_slider_download_and_errors(page, server, segmenter, tmp_path):
    image = render_scene(11, H, W)[0]
    Image.fromarray(image).save(tmp_path / "street.png")
    expected = segmenter.predict(image)
    present = np.flatnonzero(np.bincount(expected.ravel(), minlength=8))
    assert len(present) >= 2, "the test model should predict several classes"

    page.goto(server.url)
    # Locator waits, not wait_for_function: that one evals its predicate in the page, which the page's
    # Content-Security-Policy (rightly) forbids whenever the condition is not already true.
    page.locator("#title", has_text="synthetic_roads").wait_for()
    assert "fcn8s" in page.text_content("#title")

    page.set_input_files("#file", str(tmp_path / "street.png"))
    page.wait_for_selector("#result", state="visible")
    legend = page.locator("#legend li")
    assert legend.count() == len(present)
    names = [legend.nth(i).locator(".name").text_content() for i in range(legend.count())]
    assert sorted(names) == sorted(SYNTHETIC_ROADS.class_names[i] for i in present)
    shares = [float(legend.nth(i).locator(".share").text_content().rstrip("%")) for i in range(legend.count())]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100, abs=0.1 * len(shares))

    # The page blends exactly like fcnseg.viz.overlay, at the slider's opacity.
    assert page.input_value("#opacity") == "50"
    half = canvas_rgb(page)
    np.testing.assert_array_equal(half, viz.overlay(image, expected, SYNTHETIC_ROADS, 50 / 100))
    page.fill("#opacity", "85")
    page.locator("#opacity-value", has_text="85%").wait_for()
    # The page redraws on the next animation frame; after two frames the new blend is on the canvas.
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    strong = canvas_rgb(page)
    assert (strong != half).any()
    np.testing.assert_array_equal(strong, viz.overlay(image, expected, SYNTHETIC_ROADS, 85 / 100))

    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    shot = Image.open(tmp_path / "serve.png")
    assert shot.width == 1100 and shot.height >= 640

    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "street_mask.png"
    mask = Image.open(download.value.path())
    assert mask.mode == "P"
    np.testing.assert_array_equal(np.asarray(mask), expected)

    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                          "buffer": b"shopping list: eggs, milk"}])
    page.wait_for_selector("#error", state="visible")
    assert "notes.txt" in page.text_content("#error") and "not an image" in page.text_content("#error")
    assert page.is_hidden("#result")
