"""The ``fcnseg serve`` page in a real headless Chromium (Debian's ``chromium`` package + Playwright)."""

import os
import threading
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg import viz
from fcnseg.api import load
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.io import read_image
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

READ_CANVAS = """(id) => {
    const canvas = document.getElementById(id);
    return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
}"""
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


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


def canvas_rgb(page, height=H, width=W, canvas="overlay"):
    page.evaluate(NEXT_FRAMES)  # the page redraws on the next animation frame
    rgba = np.asarray(page.evaluate(READ_CANVAS, canvas), dtype=np.uint8).reshape(height, width, 4)
    assert (rgba[:, :, 3] == 255).all()
    return rgba[:, :, :3]


def hover(page, x, y, canvas="#overlay", height=H, width=W):
    """Move the mouse over image pixel (x, y) of a canvas drawn with object-fit: contain from its top left."""
    box = page.locator(canvas).bounding_box()
    scale = min(box["width"] / width, box["height"] / height)
    page.mouse.move(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale)


def inside_pixel(labels):
    """A pixel (x, y) whose 7x7 neighbourhood has one class, so rounding of the pointer cannot change it."""
    for y in range(3, labels.shape[0] - 3):
        for x in range(3, labels.shape[1] - 3):
            if (labels[y - 3:y + 4, x - 3:x + 4] == labels[y, x]).all():
                return x, y
    raise AssertionError("no uniform area in the test prediction")


def test_empty_page_explains_itself_and_runs_the_sample(page, server, segmenter, tmp_path):
    page.goto(server.url)
    # The model's name, read from its spec (checkpoints and exports alike).
    page.locator("#title", has_text="fcn8s (vgg16)").wait_for()
    assert "synthetic_roads" in page.text_content("#title")
    assert "every pixel" in page.text_content("#intro") and page.is_visible("#empty")
    assert page.is_hidden("#result")
    page.screenshot(path=str(tmp_path / "serve-empty.png"), full_page=True)
    page.click("#sample")
    page.wait_for_selector("#result", state="visible")
    page.locator("#status", has_text="sample.png · 160 × 128").wait_for()
    assert page.is_hidden("#empty")
    sample = read_image(resources.files("fcnseg") / "web" / "sample.png")
    expected = viz.overlay(sample, segmenter.predict(sample), SYNTHETIC_ROADS, 0.5)
    np.testing.assert_array_equal(canvas_rgb(page, 128, 160), expected)


def test_upload_views_pointer_slider_narrow_window_download_and_errors(page, server, segmenter, tmp_path):
    image = render_scene(11, H, W)[0]
    Image.fromarray(image).save(tmp_path / "street.png")
    expected = segmenter.predict(image)
    present = np.flatnonzero(np.bincount(expected.ravel(), minlength=8))
    assert len(present) >= 2, "the test model should predict several classes"
    colour = viz.colorize(expected, SYNTHETIC_ROADS)

    page.goto(server.url)
    # Locator waits, not wait_for_function: that one evals its predicate in the page, which the page's
    # Content-Security-Policy (rightly) forbids whenever the condition is not already true.
    page.locator("#title", has_text="synthetic_roads").wait_for()
    page.set_input_files("#file", str(tmp_path / "street.png"))
    page.wait_for_selector("#result", state="visible")
    legend = page.locator("#legend li")
    assert legend.count() == len(present)
    names = [legend.nth(i).locator(".name").text_content() for i in range(legend.count())]
    assert sorted(names) == sorted(SYNTHETIC_ROADS.class_names[i] for i in present)
    shares = [float(legend.nth(i).locator(".share").text_content().rstrip("%")) for i in range(legend.count())]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100, abs=0.1 * len(shares))

    # Overlay: the page blends exactly like fcnseg.viz.overlay, at the slider's opacity.
    assert page.input_value("#opacity") == "50"
    np.testing.assert_array_equal(canvas_rgb(page), viz.overlay(image, expected, SYNTHETIC_ROADS, 0.5))
    page.fill("#opacity", "85")
    page.locator("#opacity-value", has_text="85%").wait_for()
    np.testing.assert_array_equal(canvas_rgb(page), viz.overlay(image, expected, SYNTHETIC_ROADS, 0.85))

    # The class under the pointer, and its legend row marked.
    x, y = inside_pixel(expected)
    name = SYNTHETIC_ROADS.class_names[expected[y, x]]
    hover(page, x, y)
    page.locator("#pointer-text", has_text=f"{name} (x {x}, y {y})").wait_for()
    assert page.locator("#legend li.here .name").text_content() == name
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)

    # Mask: the colour mask alone; side by side: the image next to it.
    page.click("label:has(#view-mask)")
    np.testing.assert_array_equal(canvas_rgb(page), colour)
    assert page.is_hidden("#picture") and page.is_disabled("#opacity")
    page.click("label:has(#view-side)")
    np.testing.assert_array_equal(canvas_rgb(page), colour)
    np.testing.assert_array_equal(canvas_rgb(page, canvas="picture"), image)
    left, right = page.locator("#picture").bounding_box(), page.locator("#overlay").bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 1
    hover(page, x, y, canvas="#picture")  # the pointer works on either picture
    page.locator("#pointer-text", has_text=f"{name} (x {x}, y {y})").wait_for()
    page.screenshot(path=str(tmp_path / "serve-side.png"), full_page=True)

    # 360 px wide: nothing wider than the window, the slider beside its label, legend under the pictures.
    page.set_viewport_size({"width": 360, "height": 740})
    page.evaluate(NEXT_FRAMES)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    left, right = page.locator("#picture").bounding_box(), page.locator("#overlay").bounding_box()
    assert left["y"] + left["height"] <= right["y"] + 1  # side by side becomes one above the other
    page.click("label:has(#view-overlay)")
    label, slider = page.locator("label[for=opacity]").bounding_box(), page.locator("#opacity").bounding_box()
    assert abs((label["y"] + label["height"] / 2) - (slider["y"] + slider["height"] / 2)) < 4
    aside, stage = page.locator("aside").bounding_box(), page.locator("#stage").bounding_box()
    assert aside["y"] >= stage["y"] + stage["height"] and aside["x"] + aside["width"] <= 360
    hover(page, x, y)
    page.locator("#pointer-text", has_text=f"{name} (x {x}, y {y})").wait_for()
    page.screenshot(path=str(tmp_path / "serve-narrow.png"), full_page=True)
    assert Image.open(tmp_path / "serve-narrow.png").width == 360
    page.set_viewport_size({"width": 1100, "height": 640})

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
