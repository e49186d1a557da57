"""End-to-end: the dashboard in headless Chromium (selenium).

``test_dashboard_in_the_browser`` starts ``python -m dashboard`` on tiny synthetic data and walks through
every item of issue 13, one numbered step per fixed defect or feature: the predict button without models,
the image-partition pie, Monday weeks and whole-image axes, an inverted period, the "has an image file"
note, full-width strips and the 1600x256 viewer, refused uploads (.txt, 30 MB, a non-breaking space in an
RLE), a re-uploaded preloaded file, TP/FP/FN comparison, switching runs with an image selected, CSV and
PNG export, in-process predictions with progress and model reuse, and the live line view while
``infer.py store=...`` appends. ``test_real_data_speed`` (slow) measures first load and interactions on
the 3,389 annotated real images (skips without them) and prints the figures. Screenshots (and timings.json)
go to $STEELSEG_SCREENSHOTS, or the test's temp folder. Skips when selenium/chromium/chromedriver are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from common.annotations import read_annotations
from common.inspections import connect, query
from common.layout import find_root
from common.rle import decode, encode
from dashboard.app import Dashboard
from dashboard.views import newest_run_per_image
from ensemble_helpers import save_tiny
from synthetic.generator import generate_dataset

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver not installed"),
]
REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "severstal"
YEAR = ("2021-01-01", "2021-12-31")

# The traces of a Plotly graph as plain lists (the page holds typed arrays).
FIGURE_JS = """
const el = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');
if (!el || !el._fullData) { return null; }
const plain = v => (v == null ? null : Array.from(v, x =>
  (x != null && typeof x === 'object' && x.length !== undefined) ? Array.from(x) : x));
return {title: el._fullLayout.title.text, ticks: Array.from(el.querySelectorAll('.ytick text'), t => t.textContent),
        traces: el._fullData.map(t => ({name: t.name, x: plain(t.x), y: plain(t.y), labels: plain(t.labels),
                                        values: plain(t.values), customdata: plain(t.customdata)}))};
"""
# What the first load fetched: per request its bytes on the wire (headers included) and decoded.
RESOURCES_JS = """
const entries = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
return entries.map(e => ({name: new URL(e.name).pathname, transfer: e.transferSize, decoded: e.decodedBodySize}));
"""
VIEWER_JS = """
const plot = document.getElementById('viewer-plot');
if (!plot || !plot._fullLayout || plot.querySelectorAll('image').length < plot._fullLayout.images.length) {
  return null;
}
const body = document.querySelector('#viewer .viewer-body').getBoundingClientRect();
return {window: window.innerWidth, left: body.left, right: body.right, width: plot._fullLayout.width,
        x: plot._fullLayout.xaxis.range.slice(), y: plot._fullLayout.yaxis.range.slice(),
        images: plot._fullLayout.images.length};
"""
IMAGES_LOADED_JS = """
const imgs = Array.from(document.querySelectorAll(arguments[0]));
return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
"""


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(root: Path, db: Path, *extra: str):
    """``python -m dashboard`` on a free port until the block ends; yields the URL and the server's pid."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(db.with_suffix(".log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", str(root), "--db", str(db), "--port", str(port), *extra],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited: {db.with_suffix('.log').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.25)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1600,2400",
    ):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("STEELSEG_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_for(driver, predicate, timeout=120.0, what="condition"):  # a hang guard: a loaded machine is slow
    return WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    ).until(lambda d: predicate(d), message=what)


def idle(driver) -> bool:
    """No Dash callback in flight, the store poll aside (it runs every few seconds whatever the user does)."""
    return driver.execute_script(
        "return !Array.from(document.querySelectorAll('[data-dash-is-loading=true]'))"
        ".some(e => !e.closest('#live-status, #date-range'))"
    )


def timed(driver, action, until, what: str, timeout: float = 120.0) -> float:
    """Seconds from the action until the condition holds (and no callback is in flight)."""
    start = time.perf_counter()
    action()
    wait_for(driver, lambda d: until(d) and idle(d), timeout, what)
    return time.perf_counter() - start


class Meter:
    """Wall seconds of a step, and the CPU seconds the server and the browser spent on it.

    The machine is shared with training runs, so wall time says as much about the neighbours as about the
    page; the CPU time of the two processes that do the work is what the step costs on an idle machine
    (at most: the server and the browser also work in parallel).
    """

    def __init__(self, driver, server_pid: int) -> None:
        self.driver, self.server_pid = driver, server_pid
        self.steps: dict[str, tuple[float, float]] = {}

    def pids(self) -> list[int]:
        """The server and every process under chromedriver (the browser), chromedriver itself left out."""
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        root = self.driver.service.process.pid
        found, frontier = [], [root]
        while frontier:
            children = [p for p, parent in parents.items() if parent in frontier]
            found += children
            frontier = children
        return [self.server_pid, *found]

    @staticmethod
    def cpu(pids: list[int]) -> float:
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / os.sysconf("SC_CLK_TCK")

    def measure(self, name: str, action, until, what: str, timeout: float = 120.0) -> None:
        pids = self.pids()
        before = self.cpu(pids)
        wall = timed(self.driver, action, until, what, timeout)
        self.steps[name] = (wall, self.cpu(sorted(set(pids) | set(self.pids()))) - before)


def cards(driver) -> list[str]:
    """The five card values (one browser round trip, so polling does not slow what it measures)."""
    return driver.execute_script(
        "return [1, 2, 3, 4, 0].map(k => (document.getElementById('card-' + k) || {}).textContent)"
    )


def figure(driver, graph_id: str) -> dict | None:
    return driver.execute_script(FIGURE_JS, graph_id)


def images_loaded(driver, css: str) -> bool:
    return driver.execute_script(IMAGES_LOADED_JS, css)


def text(driver, element_id: str) -> str:
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : ''", element_id
    )


def set_date(driver, which: str, value: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"input.dash-datepicker-{which}-date")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.ENTER)
    field.send_keys(Keys.ESCAPE)
    driver.find_element(By.TAG_NAME, "h1").click()  # close the calendar before touching anything else


def choose(driver, dropdown_id: str, label: str) -> None:
    # After a reload on a loaded machine the dropdown may render a moment after the rest of its panel.
    wait_for(driver, lambda d: d.find_elements(By.ID, dropdown_id), what=f"dropdown {dropdown_id}")[0].click()
    option = wait_for(
        driver,
        lambda d: next((o for o in dropdown_options(d) if o.text.strip() == label), None),
        what=f"option {label}",
    )
    option.click()
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)


def dropdown_options(driver) -> list:
    """The option elements of the open dropdown menu (not the checklist's)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('[role=option]')).filter(o => !o.closest('#follow'))"
    )


def options_of(driver, dropdown_id: str) -> list[str]:
    driver.find_element(By.ID, dropdown_id).click()
    labels = [o.text.strip() for o in wait_for(driver, dropdown_options, what=f"{dropdown_id} options")]
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    return labels


def shown(driver) -> list[str]:
    """Images of the sample strips."""
    return [s.get_attribute("data-image") for s in driver.find_elements(By.CSS_SELECTOR, "#samples .strip")]


def upload_file(driver, path: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def scroll_to(driver, element_id: str) -> None:
    driver.execute_script(f"document.getElementById('{element_id}').scrollIntoView()")


def downloaded(folder: Path, pattern: str) -> Path | None:
    found = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
    return found[0] if found else None


def server_errors(driver) -> list[str]:
    """Browser console lines about failed requests (HTTP 4xx/5xx)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and any(code in e["message"] for code in (" 400", " 404", " 413", " 500"))
    ]


def submission(truth: pd.DataFrame, ids: list[str], drop: tuple[str, int] | None = None) -> str:
    """Old-format submission of the truth of ``ids`` with one (image, class) mask left out."""
    rles = {(i, c): r for i, c, r in truth.itertuples(index=False)}
    return "ImageId_ClassId,EncodedPixels\n" + "".join(
        f"{i}_{c},{'' if (i, c) == drop else rles.get((i, c), '')}\n" for i in ids for c in (1, 2, 3, 4)
    )


# ---------------------------------------------------------------------------------------------- synthetic walk
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(url, root, db, models folder) of the app on synthetic data: one class-4 image file removed, a
    preloaded submission, models configured but not trained yet, polling every second."""
    tmp = tmp_path_factory.mktemp("e2e")
    root = generate_dataset(tmp / "data", n_train=30, n_test=8, seed=11)
    class4 = sorted(read_annotations(root / "train.csv").rows.query("ClassId == 4").ImageId.unique())
    assert len(class4) >= 2
    (root / "train_images" / class4[0]).unlink()
    preloaded = tmp / "preloaded.csv"
    shutil.copyfile(root / "test_truth.csv", preloaded)
    models = tmp / "models"
    with serve(
        root,
        tmp / "store.sqlite",
        "--submission",
        str(preloaded),
        "--poll-s",
        "1",
        "--infer",
        f"checkpoints.classifier=[{models / 'cls'}]",
        "--infer",
        f"checkpoints.segmenter=[{models / 'seg'}]",
        "--infer",
        "tta=none",
    ) as (url, _):
        yield url, root, tmp / "store.sqlite", models


def test_dashboard_in_the_browser(synthetic, browser, shots, downloads, tmp_path):
    url, root, db, models = synthetic
    board = Dashboard.from_root(db, find_root(root))
    test_truth = read_annotations(root / "test_truth.csv").rows
    test_ids = sorted(p.name for p in (root / "test_images").iterdir())
    full = board.update_cards(*YEAR, "train")[:5]

    load = timed(
        browser,
        lambda: browser.get(url),
        lambda d: cards(d) == full and figure(d, "rate") and images_loaded(d, "#samples img"),
        "first load",
    )
    print(f"\nsynthetic: first load {load:.2f} s")

    # 1. Predict on demand without trained models: said beforehand, with the fix, and the button is disabled.
    models_line = text(browser, "predict-models")
    assert "No usable trained models" in models_line and "make demo" in models_line
    assert not browser.find_element(By.ID, "predict-run").is_enabled()

    # 2. The pie partitions the images its title counts; the cards' note says images with several classes count twice.
    pie = figure(browser, "pie")
    assert pie["title"].startswith("30 images of train") and sum(pie["traces"][0]["values"]) == 30
    assert "30 images inspected in train" in text(browser, "cards-note")

    # 3. Weeks run Monday to Sunday; the y-axis counts whole images.
    timeline = figure(browser, "timeline")
    starts = {pd.Timestamp(x) for t in timeline["traces"] for x in t["customdata"]}
    assert starts and all(s.day_of_week == 0 for s in starts), starts
    assert timeline["ticks"] and all(t.replace(",", "").isdigit() for t in timeline["ticks"]), timeline["ticks"]
    assert sum(sum(t["y"]) for t in timeline["traces"]) == 30
    browser.save_screenshot(str(shots / "01_loaded.png"))

    # 4. An inverted period is refused in the page; the views keep the last valid period.
    set_date(browser, "end", "2021-06-30")
    half = board.update_cards("2021-01-01", "2021-06-30", "train")[:5]
    wait_for(browser, lambda d: cards(d) == half, what=f"cards {half}")
    set_date(browser, "start", "2021-09-01")
    error = wait_for(browser, lambda d: text(d, "period-error"), what="inverted period error")
    assert "2021-09-01 is after the end date 2021-06-30: swap them" in error
    assert cards(browser) == half
    browser.save_screenshot(str(shots / "02_inverted_period.png"))
    set_date(browser, "start", "2021-01-01")
    set_date(browser, "end", "2021-12-31")
    wait_for(browser, lambda d: cards(d) == full and not text(d, "period-error"), what="full year again")

    # 5. The class-4 card counts 2 images, only one has a file: the samples say so.
    assert cards(browser)[3] == "2"
    choose(browser, "sample-class", "Defect 4")
    note = wait_for(browser, lambda d: "class 4" in text(d, "samples-note") and text(d, "samples-note"), what="note")
    assert "2 images of class 4 in this period; only 1 has an image file" in note
    assert len(browser.find_elements(By.CSS_SELECTOR, "#samples .strip")) == 1

    # 6. Full-width strips (also on a 1280-wide screen), a colour legend, click to enlarge to 1600x256.
    choose(browser, "sample-class", "Defect 3")
    wait_for(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples .strip")) == 3 and images_loaded(d, "#samples img"),
        what="three class-3 strips",
    )
    page_width = browser.execute_script("return document.querySelector('.wrap').clientWidth")
    widths = [s.rect["width"] for s in browser.find_elements(By.CSS_SELECTOR, "#samples .strip")]
    assert all(w >= page_width - 60 for w in widths), (widths, page_width)
    assert [s.text for s in browser.find_elements(By.CSS_SELECTOR, ".legend.classes .key")] == [
        "Defect 1",
        "Defect 2",
        "Defect 3",
        "Defect 4",
    ]
    browser.set_window_size(1280, 2400)
    narrow = wait_for(
        browser,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#samples .strip")[0].rect["width"] < 1300
            and d.find_elements(By.CSS_SELECTOR, "#samples .strip")[0].rect
        ),
        what="narrow layout",
    )
    assert narrow["width"] >= 1180 and abs(narrow["width"] / narrow["height"] - 1600 / 256) < 0.1, narrow
    browser.set_window_size(1600, 2400)
    scroll_to(browser, "samples")
    browser.find_element(By.CSS_SELECTOR, "#samples .strip").click()
    # The viewer (issue 23): a Plotly image view as wide as the window, the whole strip shown, image + overlay.
    view = wait_for(browser, lambda d: d.execute_script(VIEWER_JS), what="viewer")
    assert view["images"] == 2 and view["right"] <= view["window"] and [round(v) for v in view["x"]] == [0, 1600]
    assert "Defect 3" in browser.find_element(By.ID, "viewer").text
    browser.save_screenshot(str(shots / "03_viewer.png"))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait_for(browser, lambda d: not d.find_elements(By.ID, "viewer"), what="viewer closed")
    browser.execute_script("window.scrollTo(0, 0)")

    # 7. Uploads: a .txt, a 30 MB file (refused in the page, nothing sent) and a good file.
    txt = tmp_path / "notes.txt"
    txt.write_text("ImageId,ClassId,EncodedPixels\n")
    upload_file(browser, txt)
    wait_for(
        browser, lambda d: "notes.txt: only .csv files are accepted" in text(d, "upload-status"), what=".txt refused"
    )
    big = tmp_path / "big.csv"
    with big.open("w") as handle:
        handle.write("ImageId,ClassId,EncodedPixels\n")
        handle.write(("a.jpg,1,1 1\n" * 1000) * 2700)
    assert big.stat().st_size > 30 * 10**6
    upload_file(browser, big)
    wait_for(
        browser,
        lambda d: "big.csv: larger than the 20.0 MiB upload limit" in text(d, "upload-status"),
        timeout=60,
        what="30 MB refused",
    )
    dropped = test_truth.iloc[0]
    good = tmp_path / "my_submission.csv"
    good.write_text(submission(test_truth, test_ids, (dropped.ImageId, dropped.ClassId)))
    upload_file(browser, good)
    ok = wait_for(
        browser,
        lambda d: "Loaded my_submission.csv" in text(d, "upload-status") and text(d, "upload-status"),
        what="upload accepted",
    )
    assert "as pred:my_submission-" in ok and "Scored on 8 images" in ok

    # 8. A non-breaking space in an RLE replaces the previous success message with the error.
    nbsp = tmp_path / "nbsp.csv"
    nbsp.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1\u00a05 10 3\n", encoding="utf-8")
    upload_file(browser, nbsp)
    message = wait_for(
        browser,
        lambda d: (
            "nbsp.csv" in text(d, "upload-status")
            and "Checking" not in text(d, "upload-status")
            and text(d, "upload-status")
        ),
        what="nbsp refused",
    )
    assert "Upload refused: nbsp.csv, line 2: bad EncodedPixels" in message and "Loaded" not in message
    assert "error" in browser.find_element(By.ID, "upload-status").get_attribute("class")

    # 9. Re-uploading the preloaded file selects the preloaded run instead of adding a second copy.
    before = options_of(browser, "dataset")
    again = tmp_path / "preloaded_again.csv"
    shutil.copyfile(root / "test_truth.csv", again)
    upload_file(browser, again)
    note = wait_for(
        browser,
        lambda d: "preloaded_again.csv holds" in text(d, "upload-status") and text(d, "upload-status"),
        what="duplicate noticed",
    )
    assert "same predictions as pred:preloaded, which is already loaded" in note
    assert options_of(browser, "dataset") == before

    # 10. Truth vs prediction: the worst image as TP/FP/FN strips per class with the Dice and a legend.
    mine = next(o for o in options_of(browser, "compare-run") if o.startswith("pred:my_submission-"))
    choose(browser, "compare-run", mine)
    # The score of the run shown before stays on screen until the new one arrives: wait for the new run's note.
    score = wait_for(
        browser,
        lambda d: (
            mine in text(d, "compare-note")
            and idle(d)
            and "Kaggle score" in text(d, "score-text")
            and text(d, "score-text")
        ),
        what="score",
    )
    first = wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#worst td[data-dash-column=ImageId]"), what="worst table"
    )[0]
    assert first.text == dropped.ImageId and "on 8 images" in score
    first.click()
    wait_for(
        browser,
        lambda d: d.find_elements(By.ID, "compare-dice-table") and images_loaded(d, "#compare-view img"),
        what="comparison",
    )
    assert "0.000" in text(browser, "compare-dice-table")
    captions = browser.find_element(By.ID, "compare-view").text
    assert (
        f"class {dropped.ClassId}: Dice 0.000 — TP 0 px, FP 0 px, FN {decode(dropped.EncodedPixels).sum():,} px"
        in captions
    )
    assert "false negative (missed)" in browser.find_element(By.CSS_SELECTOR, ".legend.match").text
    # The compare dropdown lists only the run's images that have a file (all 8 here).
    assert sorted(options_of(browser, "compare-image")) == test_ids
    scroll_to(browser, "score")
    browser.save_screenshot(str(shots / "04_compare.png"))

    # 11. Export: the compared image as PNG, the filtered inspections as CSV.
    browser.find_element(By.ID, "export-png").click()
    png = wait_for(browser, lambda d: downloaded(downloads, "*.png"), what="PNG download")
    image = cv2.imread(str(png))
    assert image.shape[1] == 1600 and image.shape[0] > 256
    browser.execute_script("window.scrollTo(0, 0)")
    browser.find_element(By.ID, "export-csv").click()
    csv = wait_for(browser, lambda d: downloaded(downloads, "inspections_*.csv"), what="CSV download")
    exported = pd.read_csv(csv)
    assert csv.name == "inspections_train_2021-01-01_2021-12-31.csv" and exported.image_id.nunique() == 30

    # 12. Switching the run while an image is selected: no server error, the selection follows the run.
    choose(browser, "compare-run", "pred:preloaded")
    wait_for(browser, lambda d: "pred:preloaded" in text(d, "compare-note") and idle(d), what="run switched")
    assert dropped.ImageId in browser.find_element(By.ID, "compare-view").text  # the preloaded run has it too
    assert server_errors(browser) == []

    # 13. Predict on demand: models trained while the page is open are found on reload, loaded once, reused.
    save_tiny(models / "cls" / "checkpoints" / "best.pt", "classifier")
    save_tiny(models / "seg" / "checkpoints" / "best.pt", "segmenter")
    browser.get(url)
    wait_for(browser, lambda d: d.find_element(By.ID, "predict-run").is_enabled(), what="button enabled")
    assert "1 classifier, 1 segmenter checkpoint(s) (loaded on first use)" in text(browser, "predict-models")
    for image_id in test_ids:
        choose(browser, "predict-images", image_id)
    scroll_to(browser, "predict-models")
    browser.find_element(By.ID, "predict-run").click()
    busy = wait_for(browser, lambda d: text(d, "predict-busy"), what="progress shown")
    assert "Loading the models" in busy or "Predicting" in busy
    assert not browser.find_element(By.ID, "predict-run").is_enabled()
    done = wait_for(browser, lambda d: text(d, "predict-ok"), timeout=120, what="predictions")
    assert "8 image(s)" in done and "models loaded in" in done and "stored as pred:live-" in done
    wait_for(
        browser,
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#predict-output .strip")) == 8
            and images_loaded(d, "#predict-output img")
        ),
        what="predicted strips",
    )
    browser.save_screenshot(str(shots / "05_predict.png"))
    browser.find_element(By.ID, "predict-run").click()
    wait_for(browser, lambda d: "models reused" in text(d, "predict-ok"), timeout=120, what="second prediction")

    # 14. Live line view: infer.py appends to the store; the page picks it up and shows the defect rate per hour.
    browser.execute_script("window.scrollTo(0, 0)")
    done = subprocess.run(
        [
            sys.executable,
            "infer.py",
            f"checkpoints.classifier=[{models / 'cls'}]",
            f"checkpoints.segmenter=[{models / 'seg'}]",
            f"images={root / 'test_images'}",
            f"output={tmp_path / 'line.csv'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "tta=none",
            "progress=false",
            f"store={db}",
            "run_id=line1",
            "ensemble.gating.mode=none",
            "postprocess.min_area=[0,0,0,0]",
            "postprocess.pixel_threshold=[0.5,0.5,0.5,0.5]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    today = datetime.now(timezone.utc).date().isoformat()
    wait_for(browser, lambda d: "pred:line1" in options_of(d, "dataset"), timeout=120, what="new run picked up")
    end = browser.find_element(By.CSS_SELECTOR, "input.dash-datepicker-end-date").get_attribute("value")
    assert end == today  # "follow new inspections" moved the period
    choose(browser, "dataset", "all prediction runs (live line)")
    set_date(browser, "start", today)
    with closing(connect(db)) as conn:
        line = query(conn, today, today)
    line = newest_run_per_image(line[line.source.str.startswith("pred:")])  # the live line counts each image once
    images = line.groupby("image_id").class_id.max()
    wait_for(
        browser,
        lambda d: (figure(d, "rate") or {}).get("title", "").startswith("Defect rate per class per hour"),
        what="hourly rate",
    )
    rate = figure(browser, "rate")
    anyline = next(t for t in rate["traces"] if t["name"] == "Any defect")
    assert sum(int(c[1]) for c in anyline["customdata"]) == len(images)  # images inspected
    assert sum(int(c[0]) for c in anyline["customdata"]) == int((images > 0).sum())  # ... with a defect
    assert cards(browser)[4] == f"{int((images == 0).sum()):,}"
    scroll_to(browser, "rate")
    wait_for(browser, idle, what="views refreshed")
    browser.save_screenshot(str(shots / "06_live_line.png"))
    assert server_errors(browser) == []


# ---------------------------------------------------------------------------------------------- real data speed
@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(not (REAL / "annotations" / "train_rle_partial.csv").is_file(), reason="real data absent")
def test_real_data_speed(browser, shots, downloads, tmp_path, capsys):
    """First load and interactions on the 3,389 real annotated images (figures printed, not asserted)."""
    db = tmp_path / "real.sqlite"
    data = find_root(REAL)
    truth = read_annotations(data.train_csv).rows
    # A submission over every annotated image: the truth with each third mask shifted 40 px right.
    ids = pd.read_csv(data.train_ids_csv).ImageId.tolist()
    shifted = truth.copy()
    for k in range(0, len(shifted), 3):
        shifted.iat[k, 2] = encode(np.roll(decode(shifted.iat[k, 2]), 40, axis=1))
    sub = tmp_path / "shifted.csv"
    sub.write_text(submission(shifted, ids))
    board = Dashboard.from_root(db, data)
    with serve(REAL, db) as (url, server):
        meter = Meter(browser, server)
        step = meter.measure
        expected = board.update_cards(*YEAR, "train")[:5]
        step(
            "first load (cards, 3 charts, 3 sample strips)",
            lambda: browser.get(url),
            lambda d: cards(d) == expected and figure(d, "rate") and images_loaded(d, "#samples img"),
            "first load",
        )
        browser.save_screenshot(str(shots / "real_01_loaded.png"))
        transfer = browser.execute_script(RESOURCES_JS)
        step(
            "reload (browser cache warm)",
            lambda: browser.get(url),
            lambda d: cards(d) == expected and figure(d, "rate") and images_loaded(d, "#samples img"),
            "reload",
        )
        half = board.update_cards("2021-01-01", "2021-06-30", "train")[:5]
        step(
            "date range: end date typed",
            lambda: set_date(browser, "end", "2021-06-30"),
            lambda d: cards(d) == half and images_loaded(d, "#samples img"),
            "half year",
        )
        step(
            "sample class changed",
            lambda: choose(browser, "sample-class", "Defect 3"),
            lambda d: "class 3" in text(d, "samples-note") and images_loaded(d, "#samples img"),
            "class 3 samples",
        )
        first = shown(browser)
        step(
            "re-roll",
            lambda: browser.find_element(By.ID, "reroll").click(),
            lambda d: shown(d) != first and images_loaded(d, "#samples img"),
            "re-roll",
        )
        step(
            "enlarge a strip (zoomable viewer, fit to width)",
            lambda: browser.find_element(By.CSS_SELECTOR, "#samples .strip").click(),
            lambda d: d.execute_script(VIEWER_JS),
            "viewer",
        )
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        browser.execute_script("window.scrollTo(0, 0)")
        run = "pred:farrell0828_submission_stage1"
        run_cards = board.update_cards("2021-01-01", "2021-06-30", run)[:5]
        step(
            "dataset changed to a prediction run",
            lambda: choose(browser, "dataset", run),
            lambda d: cards(d) == run_cards and run in figure(d, "pie")["title"] and images_loaded(d, "#samples img"),
            "run cards",
        )
        step(
            "upload of a 3,389-image submission (validated, stored, scored, worst table)",
            lambda: upload_file(browser, sub),
            lambda d: (
                "Scored on" in text(d, "upload-status")
                and d.find_elements(By.CSS_SELECTOR, "#worst td[data-dash-column=ImageId]")
            ),
            "upload scored",
        )
        scroll_to(browser, "score")
        cell = browser.find_element(By.CSS_SELECTOR, "#worst td[data-dash-column=ImageId]")
        step(
            "worst row clicked: TP/FP/FN strips and Dice",
            cell.click,
            lambda d: text(d, "compare-dice-table") and images_loaded(d, "#compare-view img"),
            "compare",
        )
        browser.save_screenshot(str(shots / "real_02_compare.png"))
        step(
            "compare run switched with an image selected",
            lambda: choose(browser, "compare-run", run),
            lambda d: run in text(d, "compare-note"),
            "switch",
        )
        browser.execute_script("window.scrollTo(0, 0)")
        step(
            "export inspections (CSV of the period's run)",
            lambda: browser.find_element(By.ID, "export-csv").click(),
            lambda d: downloaded(downloads, "inspections_pred-farrell*.csv"),
            "csv",
        )
        assert server_errors(browser) == []
    load = os.getloadavg()[0]
    report = {
        "steps": {k: {"wall_s": round(w, 3), "cpu_s": round(c, 3)} for k, (w, c) in meter.steps.items()},
        "transfer_first_load": transfer,
        "load_average_1min": load,
    }
    (shots / "timings.json").write_text(json.dumps(report, indent=2) + "\n")
    with capsys.disabled():
        print(
            f"\nreal data (3,389 annotated images), headless Chromium, 2-core machine shared with other jobs "
            f"(1-min load average {load:.1f}); wall s, CPU s of server + browser:"
        )
        for name, (wall, cpu) in meter.steps.items():
            print(f"  {wall:6.2f} {cpu:6.2f}  {name}")
        total = [sum(r[k] for r in transfer) for k in ("transfer", "decoded")]
        print(
            f"  first load: {len(transfer)} requests, {total[0] / 1024:,.0f} KiB over the wire, "
            f"{total[1] / 1024:,.0f} KiB decoded; the largest:"
        )
        for r in sorted(transfer, key=lambda r: -r["decoded"])[:4]:
            print(f"  {r['transfer'] / 1024:8,.0f} KiB of {r['decoded'] / 1024:8,.0f} KiB  {r['name']}")
