"""The comparison report opened in a real browser: headless Chromium (the system's packages), driven by Selenium.

Never a downloaded browser: the Service points at the system chromedriver, so Selenium Manager has nothing to fetch.
Skips, saying what to install, where no browser is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tailorlm.evaluation.report import recommend, render_report

BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER = "/usr/bin/chromedriver"
PLOTS = ("plot-quality-cost", "plot-loss", "plot-per-class")


def _browser() -> str | None:
    return next((path for path in BROWSERS if Path(path).is_file()), None)


def _board() -> dict:
    def entry(strategy, score, ci, train=0.0, **extra):
        return {"model": "smollm2-135m-instruct", "strategy": strategy, "status": "ok", "score": score, "ci": ci,
                "examples": 60, "train_seconds": train, "seconds_per_example": 0.05, "scoring": "choice",
                "trainable_parameters": 0, "peak_memory_mb": 900.0, "disk_mb": 0.01,
                "per_class": {"bearish": {"f1": 0.4, "support": 9}, "bullish": {"f1": 0.6, "support": 12},
                              "neutral": {"f1": 0.8, "support": 39}}, **extra}

    entries = [entry("zero_shot", 0.41, [0.33, 0.49]), entry("few_shot", 0.58, [0.49, 0.66]),
               entry("p_tuning", 0.52, [0.44, 0.60], train=80.0, loss_curve=[[1, 3.1], [5, 2.2], [10, 1.8]]),
               entry("lora", 0.64, [0.56, 0.72], train=95.0, loss_curve=[[1, 2.9], [5, 1.4], [10, 0.9]]),
               {"model": "smollm2-135m-instruct", "strategy": "full", "status": "failed", "error": "out of memory"}]
    board = {"task": "finance-news-sentiment", "metric": "macro_f1", "higher_is_better": True, "answer": "label",
             "split": "test", "examples": 60, "seed": 0, "entries": entries,
             "disagreements": [{"id": "test-1", "input": "$AAPL beats <estimates>", "reference": "bullish",
                                "predictions": {"zero_shot": "neutral", "lora": "bullish"}}]}
    board["recommendation"] = recommend(board)
    return board


@pytest.fixture
def driver(monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never go to the network
    browser = _browser()
    if browser is None or not Path(DRIVER).is_file():
        pytest.skip("no system Chromium: install the Debian packages `chromium` and `chromium-driver` "
                    "(apt-get install -y chromium chromium-driver) to run the browser test")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,2400", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager is never asked to find (or download) a browser or driver.
    session = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    session.set_page_load_timeout(60)
    try:
        yield session
    finally:
        session.quit()


def test_report_renders_table_and_every_plot(tmp_path, driver):
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(render_report(_board()), encoding="utf-8")
    driver.get(page.as_uri())
    assert driver.title == "finance-news-sentiment: tailorlm comparison"
    table = driver.find_element(By.ID, "leaderboard")
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == ["lora", "few_shot", "p_tuning", "zero_shot", "full"]
    assert "best" in rows[0].get_attribute("class")
    assert table.size["width"] > 0 and table.size["height"] > 0
    for ident in PLOTS:
        svg = driver.find_element(By.ID, ident)
        assert svg.is_displayed(), ident
        assert svg.size["width"] > 100 and svg.size["height"] > 50, (ident, svg.size)
        # the browser laid out the drawing itself: its bounding box is not empty
        box = driver.execute_script("const b = arguments[0].getBBox(); return [b.width, b.height];", svg)
        assert box[0] > 0 and box[1] > 0, (ident, box)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#plot-quality-cost circle")) == 4
    assert len(driver.find_elements(By.CSS_SELECTOR, "#plot-loss polyline")) == 2
    per_class = driver.find_element(By.ID, "per-class")
    assert len(per_class.find_elements(By.CSS_SELECTOR, "tbody tr")) == 4
    assert "lora" in driver.find_element(By.ID, "recommendation").text
    cell = driver.find_element(By.CSS_SELECTOR, "#disagreements tbody td")
    assert cell.text == "$AAPL beats <estimates>"  # escaped in the source, shown as text
