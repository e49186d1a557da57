"""End-to-end: the dashboard in headless Chromium (selenium) on tiny synthetic data.

Starts ``python -m dashboard`` on a free 127.0.0.1 port, changes the date range and the class dropdown,
uploads a submission (and a broken one), clicks through the worst-images table, runs a prediction with a
stand-in inference command, and checks what the page shows. Screenshots go to $STEELSEG_SCREENSHOTS (or
the test's temp folder). Skips when selenium, chromium or chromedriver are missing.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from common.annotations import read_annotations
from common.inspections import connect
from common.layout import find_root
from synthetic.generator import generate_dataset
from dashboard import importer
from dashboard.app import Dashboard

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver not installed")
FAKE = Path(__file__).parent / "helpers" / "fake_infer.py"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, root, db): the app running in a subprocess on synthetic data."""
    tmp = tmp_path_factory.mktemp("e2e")
    root = generate_dataset(tmp / "data", n_train=30, n_test=8, seed=11)
    db, port = tmp / "store.sqlite", free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", str(root), "--db", str(db), "--port", str(port),
                             "--predict-cmd", f"{{python}} {FAKE} {{images}} {{submission}}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited: {proc.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.25)
        yield url, root, db
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1600,2300"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("STEELSEG_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_for(driver, predicate, timeout=30.0, what="condition"):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d), message=what)


def cards(driver) -> list[str]:
    return [driver.find_element(By.ID, f"card-{k}").text for k in (1, 2, 3, 4, 0)]


def set_date(driver, css: str, value: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, css)
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.ENTER)
    field.send_keys(Keys.ESCAPE)
    driver.find_element(By.TAG_NAME, "h1").click()  # close the calendar before touching anything else


def choose(driver, dropdown_id: str, label: str) -> None:
    driver.find_element(By.ID, dropdown_id).click()
    option = wait_for(driver, lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                              if o.text.strip() == label), None), what=f"option {label}")
    option.click()


def test_dashboard_in_the_browser(served, browser, shots, tmp_path):
    url, root, db = served
    board = Dashboard.from_root(db, find_root(root))
    browser.get(url)
    full = board.update_cards("2021-01-01", "2021-12-31", "train")
    wait_for(browser, lambda d: cards(d) == full, what=f"cards {full}")
    browser.save_screenshot(str(shots / "01_loaded.png"))

    # Date range: the first half of the year.
    set_date(browser, "input.dash-datepicker-start-date", "2021-01-01")
    set_date(browser, "input.dash-datepicker-end-date", "2021-06-30")
    half = board.update_cards("2021-01-01", "2021-06-30", "train")
    assert half != full
    wait_for(browser, lambda d: cards(d) == half, what=f"cards {half} after the date change, got {cards(browser)}")
    assert "Defect distribution — train" in browser.find_element(By.ID, "pie").text

    # Class dropdown: three class-3 images of the period, each as image, mask and contours.
    truth = read_annotations(root / "train.csv").rows
    class3 = set(truth.loc[truth.ClassId == 3, "ImageId"])
    choose(browser, "sample-class", "Defect 3")
    rows = wait_for(browser, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#samples .image-row")
                                        if r.get_attribute("data-image") in class3] or None, what="class-3 samples")
    shown = [r.get_attribute("data-image") for r in browser.find_elements(By.CSS_SELECTOR, "#samples .image-row")]
    assert set(shown) <= class3 and all(importer.synthetic_date(i) < "2021-07" for i in shown)
    assert len(rows[0].find_elements(By.TAG_NAME, "img")) == 3
    browser.save_screenshot(str(shots / "02_period_class3.png"))

    # A broken upload shows its error in the page.
    bad = tmp_path / "broken.csv"
    bad.write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,5 3 1 2\n")
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(bad))
    error = wait_for(browser, lambda d: d.find_elements(By.ID, "upload-error"), what="upload error")[0]
    assert "broken.csv, line 2: bad EncodedPixels" in error.text

    # A good upload (test truth with one mask left out) is scored and browsable.
    test_truth = read_annotations(root / "test_truth.csv").rows
    dropped = test_truth.iloc[0]
    rles = {(i, c): r for i, c, r in test_truth.itertuples(index=False)}
    sub = tmp_path / "my_submission.csv"
    sub.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(
        f"{i}_{c},{'' if (i, c) == (dropped.ImageId, dropped.ClassId) else rles.get((i, c), '')}\n"
        for i in sorted(p.name for p in (root / "test_images").iterdir()) for c in (1, 2, 3, 4)))
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(sub))
    ok = wait_for(browser, lambda d: d.find_elements(By.ID, "upload-ok"), what="upload accepted")[0]
    assert "as pred:my_submission-" in ok.text and "Scored on" in ok.text
    # The full year again, so that every test image is in the period.
    set_date(browser, "input.dash-datepicker-end-date", "2021-12-31")
    score = wait_for(browser, lambda d: d.find_elements(By.ID, "score-text"), what="score")[0]
    assert "Kaggle score" in score.text
    first = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#worst td[data-dash-column=ImageId]"),
                     what="worst table")[0]
    assert first.text == dropped.ImageId
    first.click()
    dice = wait_for(browser, lambda d: d.find_elements(By.ID, "compare-dice"), what="side-by-side view")[0]
    assert "0.000" in dice.text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#compare-view img")) == 2
    browser.execute_script("document.getElementById('score').scrollIntoView()")
    browser.save_screenshot(str(shots / "03_upload_compare.png"))

    # The dataset selector offers the uploaded run.
    browser.find_element(By.ID, "dataset").click()
    labels = [o.text for o in wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=option]"))]
    assert any(t.startswith("pred:my_submission-") for t in labels) and "train" in labels and "test" in labels
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    # Predictions on demand with the stand-in command.
    test_ids = sorted(p.name for p in (root / "test_images").iterdir())[:2]
    for image_id in test_ids:
        choose(browser, "predict-images", image_id)
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    browser.find_element(By.ID, "predict-run").click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predict-output .image-row")) == 2,
             what="predicted masks")
    assert "Stored as pred:live-" in browser.find_element(By.ID, "predict-output").text
    browser.execute_script("document.getElementById('predict-output').scrollIntoView()")
    browser.save_screenshot(str(shots / "04_predict.png"))
