"""The demo page (#40) in a real browser: Debian's chromium and chromedriver (apt-get install chromium
chromium-driver), driven by Selenium. The app runs on a free loopback port with a tiny random model. A missing
browser fails these tests: they are never skipped."""

import base64
import io
import os
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import random_images
from PIL import Image

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.demo import build, figure4_keeps, launch
from vdvae_zoo.generation import sample_grid

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert CliRunner().invoke(main, ["new", "tiny32", "-o", str(root / "model")]).exit_code == 0
    model = vdvae_zoo.load(str(root / "model"))
    blocks = build(model)
    port = _free_port()
    blocks.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    images = random_images(2, size=32, seed=21).numpy()
    Image.fromarray(images[0]).save(root / "a.png")
    Image.fromarray(images[1][:24]).save(root / "wide.png")  # 32x24: centre-cropped and resized
    (root / "text.png").write_text("this is not an image")
    yield {"url": f"http://127.0.0.1:{port}/", "model": model, "root": root, "folder": str(root / "model")}
    blocks.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "the demo tests need a real browser: apt-get install chromium chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _open(browser, app, tab: str):
    """Load the page and show `tab` (clicked until the page, hydrated, says it is selected)."""
    from selenium.webdriver.common.by import By

    browser.get(app["url"])

    def selected():
        for button in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]"):
            if button.text.strip() == tab:
                if button.get_attribute("aria-selected") == "true":
                    return True
                button.click()
        return False

    _wait(selected)
    time.sleep(0.5)


def _wait(condition, timeout: float = WAIT_S):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("the page did not show the result in time")


def _image(browser, app, selector: str, previous: str | None = None) -> tuple[np.ndarray, str]:
    """The picture an output shows (waiting for a new one when `previous` is its last src), as an array."""
    from selenium.webdriver.common.by import By

    def src():
        found = browser.find_elements(By.CSS_SELECTOR, f"{selector} img")
        value = found[0].get_attribute("src") if found else None
        return value if value and value != previous else None

    url = _wait(src)
    if url.startswith("data:"):
        data = base64.b64decode(url.split(",", 1)[1])
    else:
        with urllib.request.urlopen(url, timeout=30) as response:  # the app's own loopback server
            data = response.read()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image), url


def _upload(browser, container: str, path: Path):
    from selenium.webdriver.common.by import By

    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, f"{container} input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, f"{container} input[type=file]").send_keys(str(path))
    if container != "#restore-editor":  # a file list shows the name once the upload is done
        _wait(lambda: path.name in browser.find_element(By.CSS_SELECTOR, container).text.replace("\n", ""))


def test_sample_shows_the_command_lines_picture_and_follows_each_slider(app, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(browser, app, "Sample")
    browser.find_element(By.ID, "sample-button").click()
    shown, src = _image(browser, app, "#sample-output")
    resolutions = sorted(set(app["model"].layer_resolutions))
    expected = np.asarray(sample_grid(app["model"], 4, dict.fromkeys(resolutions, 1.0), 0))
    assert shown.shape[:2] == expected.shape[:2] and np.array_equal(shown[..., :3], expected[..., :3])
    browser.save_screenshot(str(tmp_path / "sample.png"))
    box = browser.find_element(By.CSS_SELECTOR, "#t4 input[type=number]")  # one resolution's slider
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("0.2", Keys.TAB)
    time.sleep(1)
    browser.find_element(By.ID, "sample-button").click()
    moved, _ = _image(browser, app, "#sample-output", previous=src)
    schedule = dict.fromkeys(resolutions, 1.0) | {4: 0.2}
    assert not np.array_equal(moved, shown)
    assert np.array_equal(moved[..., :3], np.asarray(sample_grid(app["model"], 4, schedule, 0))[..., :3])


def test_score_gives_the_bpd_of_the_command_line(app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _open(browser, app, "Score")
    _upload(browser, "#score-files", app["root"] / "a.png")
    browser.find_element(By.ID, "score-button").click()

    def cells():
        texts = [
            (c.get_attribute("textContent") or "").strip()
            for c in browser.find_elements(By.CSS_SELECTOR, "#score-table td")
        ]
        return texts if "a.png" in texts else None

    cells = _wait(cells)
    assert _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#score-charts img"))  # the image's KL chart
    browser.save_screenshot(str(tmp_path / "score.png"))
    out = tmp_path / "bpd.csv"
    args = ["bpd", "--model", app["folder"], str(app["root"] / "a.png"), "--seed", "0", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    import csv

    with out.open() as f:
        row = next(r for r in csv.DictReader(f) if r.get("path", r.get("file", "")).endswith("a.png"))
    shown_bpd = float(cells[cells.index("a.png") + 1])
    assert shown_bpd == pytest.approx(float(row["bpd"]), abs=1e-3)


def test_a_bad_upload_is_one_message_and_the_page_keeps_working(app, browser):
    from selenium.webdriver.common.by import By

    _open(browser, app, "Score")
    _upload(browser, "#score-files", app["root"] / "text.png")
    browser.find_element(By.ID, "score-button").click()
    message = _wait(lambda: "cannot be used" in browser.page_source and browser.page_source)
    assert "text.png cannot be used" in message and "Traceback" not in message
    _open(browser, app, "Score")  # the next upload works
    _upload(browser, "#score-files", app["root"] / "wide.png")
    browser.find_element(By.ID, "score-button").click()
    _wait(lambda: "centre-cropped and resized" in browser.page_source)


def test_restore_keeps_the_observed_pixels_where_the_mask_was_not_painted(app, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _open(browser, app, "Restore")
    _upload(browser, "#restore-editor", app["root"] / "a.png")
    canvas = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#restore-editor canvas"))[0]
    time.sleep(2)
    for button in browser.find_elements(By.CSS_SELECTOR, "#restore-editor button"):
        if (button.get_attribute("aria-label") or "").lower() in ("brush", "draw"):
            button.click()
            break
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(30, 10).move_by_offset(
        -20, 20
    ).release().perform()
    time.sleep(1)
    browser.find_element(By.ID, "restore-button").click()
    restored, _ = _image(browser, app, "#restore-output")
    mask, _ = _image(browser, app, "#restore-mask")
    browser.save_screenshot(str(tmp_path / "restore.png"))
    observed = mask > 127
    assert 0 < (~observed).sum() < observed.size  # something was painted, not everything
    original = np.asarray(Image.open(app["root"] / "a.png"))
    zoom = restored.shape[0] // 32
    result = restored[zoom // 2 :: zoom, zoom // 2 :: zoom][:32, :32, :3] if zoom > 1 else restored[..., :3]
    assert np.array_equal(result[observed], original[observed])


def test_the_launcher_binds_loopback_shares_nothing_and_cleans_up(app, monkeypatch):
    import gradio

    seen = {}

    def fake_launch(self, **kwargs):
        seen.update(kwargs, temp=os.environ.get("GRADIO_TEMP_DIR"))
        Path(seen["temp"], "upload.png").write_bytes(b"x")
        raise KeyboardInterrupt  # Ctrl-C while serving

    monkeypatch.setattr(gradio.Blocks, "launch", fake_launch)
    before = os.environ.get("GRADIO_TEMP_DIR")
    launch(app["model"])  # returns: Ctrl-C stops it cleanly
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False
    assert not Path(seen["temp"]).exists() and os.environ.get("GRADIO_TEMP_DIR") == before
    assert figure4_keeps(13) == [1, 4, 13] and figure4_keeps(64) == [1, 4, 16, 64]


def test_the_spaces_entry_point_builds_the_page(app, monkeypatch):
    import runpy

    import gradio

    monkeypatch.setenv("VDVAE_MODEL", app["folder"])
    space = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "app.py"), run_name="space")
    assert isinstance(space["demo"], gradio.Blocks)


def test_the_command_serves_keeps_uploads_in_its_own_folder_and_stops_cleanly_on_ctrl_c(app, browser, tmp_path):
    """`vdvae-zoo demo` in its own process: it serves on loopback, an upload lands in its temporary folder, and
    Ctrl-C (SIGINT) stops it with status 0 and that folder removed."""
    import signal
    import subprocess
    import sys

    port = _free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))  # tempfile.mkdtemp puts the upload folder here
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdvae_zoo", "demo", app["folder"], "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"

        def up():
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return True
            except OSError:
                return proc.poll() is not None and AssertionError(proc.stdout.read())

        assert _wait(up) is True
        folders = list(tmp_path.glob("vdvae-zoo-demo-*"))
        assert len(folders) == 1
        _open(browser, {"url": url}, "Score")
        _upload(browser, "#score-files", app["root"] / "a.png")
        assert _wait(lambda: any(p.name == "a.png" for p in folders[0].rglob("*")))  # Gradio keeps uploads there
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not folders[0].exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_every_tab_shows_and_is_saved_as_a_screenshot(app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    for tab in ("Sample", "Reconstruct", "Interpolate", "Restore", "Score"):
        _open(browser, app, tab)
        buttons = [b for b in browser.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == tab]
        assert buttons and buttons[-1].is_displayed()  # the tab's own action button is on the page
        browser.save_screenshot(str(tmp_path / f"{tab.lower()}.png"))
        assert Image.open(tmp_path / f"{tab.lower()}.png").format == "PNG"


def test_restore_upscales_a_small_upload_as_it_is(app):
    """The Restore tab's call without the browser: a (size / factor)^2 upload is the observation itself, and equals
    vdvae_zoo.restore of it; a full-size one is reduced first, and the page says so."""
    from vdvae_zoo.demo import _Page
    from vdvae_zoo.restore import Downsampling, restore

    page = _Page(app["model"])
    small = random_images(1, size=8, seed=22).numpy()[0]
    shown, _, _, note = page.restore({"background": small, "composite": small}, "upscale", 4, 25, 1, 0)
    expected = restore(app["model"], small[None], Downsampling(4), samples=1, seed=0).images
    assert "8x8 upscaled x4" in note and np.array_equal(np.asarray(shown), np.asarray(page.show(expected)))
    full = random_images(1, size=32, seed=23).numpy()[0]
    _, _, _, note = page.restore({"background": full, "composite": full}, "upscale", 4, 25, 1, 0)
    assert "reduced x4 first" in note
