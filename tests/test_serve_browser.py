"""retrieval serve end to end in a real headless browser: Debian's chromium driven by selenium through
its own chromedriver (never a browser downloaded at run time). Uploads an image, checks the results,
moves the v slider, clicks a result, draws matches, saves screenshots (to a temporary folder; also to
``$RETRIEVAL_SERVE_SCREENSHOT`` when set, which is how docs/serve.png is made). Skips with the reason when
selenium, chromium or chromedriver is missing; the API tests (test_serve.py) do not need any of them."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

UNSKIP_EXTRA = "to run it: pip install 'hybrid-retrieval[serve]'"
# the one command that un-skips the browser test on Debian / Ubuntu (as root), as the README's set-up says
UNSKIP_BROWSER = "apt-get install -y chromium chromium-driver"
pytest.importorskip("fastapi", reason=f"the serve extra (fastapi) is not installed; {UNSKIP_EXTRA}")
uvicorn = pytest.importorskip("uvicorn", reason=f"the serve extra (uvicorn) is not installed; {UNSKIP_EXTRA}")
pytest.importorskip("selenium", reason=f"selenium is not installed; {UNSKIP_EXTRA}")

from test_serve import build_small_index  # noqa: E402

CHROMIUM = [os.environ.get("CHROMIUM_BINARY"), "/usr/bin/chromium", shutil.which("chromium")]
DRIVER = [os.environ.get("CHROMEDRIVER"), "/usr/bin/chromedriver", shutil.which("chromedriver")]


def _found(candidates):
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _found(CHROMIUM), _found(DRIVER)
    if binary is None or driver_path is None:
        pytest.skip(f"no headless browser (chromium={binary}, chromedriver={driver_path}); to run it: "
                    f"{UNSKIP_BROWSER}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium did not start: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(coil20_dir, tmp_path_factory):
    from retrieval.serve import Catalog, create_app
    from retrieval.serve.results import ResultsFolder

    small = build_small_index(coil20_dir, tmp_path_factory.mktemp("serve-browser"))
    catalog = Catalog.open(index=small["index"], features=small["features"], images=small["images"],
                           local=small["local"], dataset=small["dataset"], extractor=small["extractor"])
    port = _free_port()
    config = uvicorn.Config(create_app(catalog, ResultsFolder(small["results"])), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", small
    srv.should_exit = True
    thread.join(10)
    catalog.close()


def _wait(driver, condition, timeout=30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _order(driver):
    from selenium.webdriver.common.by import By

    return [e.get_attribute("data-id") for e in driver.find_elements(By.CSS_SELECTOR, "#results .result")]


def test_search_page_in_a_browser(browser, server, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, small = server
    shots = []

    def shot(name):
        path = tmp_path / f"{name}.png"
        browser.save_screenshot(str(path))
        shots.append(path)

    browser.get(base + "/")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#browse-grid img")) == 48)
    # before any search the query panel (an empty, broken image) stays hidden: its hidden attribute
    # must win over the stylesheet's display: flex
    assert not browser.find_element(By.ID, "query-panel").is_displayed()
    shot("0-start")

    # upload an image: its own database copy comes first, the k results are shown
    browser.find_element(By.ID, "upload").send_keys(str(small["images"] / "obj3__12.png"))
    _wait(browser, lambda d: len(_order(d)) == 20)
    assert _order(browser)[0] == "obj3__12"
    assert "upload" in browser.find_element(By.ID, "query-caption").text
    shot("1-upload")

    # click a database image: search by id, ground truth marked, AP shown
    browser.find_element(By.CSS_SELECTOR, "#browse-grid img[data-id='obj1__18']").click()
    _wait(browser, lambda d: d.find_element(By.ID, "query-caption").text.startswith("obj1__18"))
    _wait(browser, lambda d: _order(d) and _order(d)[0] == "obj1__18")
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert "junk" in cards[0].get_attribute("class")
    assert {c.get_attribute("class").split()[1] for c in cards[1:]} <= {"positive", "negative"}
    assert "AP (global)" in browser.find_element(By.ID, "ap").text

    # the v slider re-orders the shortlist in the page exactly as the API orders it at that v
    slider = browser.find_element(By.ID, "v-slider")
    for key, v in ((Keys.END, 1.0), (Keys.HOME, 0.0)):
        slider.send_keys(key)
        _wait(browser, lambda d: d.find_element(By.ID, "v-value").text == f"{v:.2f}")
        expected = httpx.get(f"{base}/api/search", params={"id": "obj1__18", "k": 20, "v": v}).json()
        assert _order(browser) == expected["fused_order"], v
        assert browser.find_element(By.ID, "ap-fused").text == f"{expected['ap']['fused']:.4f}"
    shot("2-slider-v0")

    # matches drawn on request
    browser.find_element(By.CSS_SELECTOR, "#results .result:nth-child(2) button.matches").click()
    _wait(browser, lambda d: d.find_element(By.ID, "matches-panel").is_displayed())
    assert "matches" in browser.find_element(By.ID, "matches-title").text
    assert int(browser.find_element(By.ID, "matches-canvas").get_attribute("width")) > 100
    shot("3-matches")

    # click a result: it becomes the query
    second = _order(browser)[1]
    browser.find_element(By.CSS_SELECTOR, f"#results .result[data-id='{second}'] img").click()
    _wait(browser, lambda d: d.find_element(By.ID, "query-caption").text.startswith(second))
    assert browser.current_url.endswith("/?id=" + second)

    # the results folder page: table, figure, failures
    browser.get(base + "/results")
    assert browser.find_element(By.CSS_SELECTOR, "#results-tables table").is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, "#all-rows table").is_displayed()  # folded
    assert browser.find_elements(By.CSS_SELECTOR, "#failures a")[0].get_attribute("href").endswith("/?id=obj2__6")
    shot("4-results")

    # a bad upload shows its message and the page keeps working
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    browser.get(base + "/?id=obj2__0")
    _wait(browser, lambda d: _order(d) and _order(d)[0] == "obj2__0")
    browser.find_element(By.ID, "upload").send_keys(str(bad))
    _wait(browser, lambda d: "not an image" in d.find_element(By.ID, "status").text)

    for path in shots:
        assert path.stat().st_size > 5000
    target = os.environ.get("RETRIEVAL_SERVE_SCREENSHOT")
    if target:
        browser.set_window_size(1280, 1400)
        browser.get(base + "/?id=obj1__18")
        _wait(browser, lambda d: len(_order(d)) == 20)
        browser.find_element(By.CSS_SELECTOR, "#results .result:nth-child(3) button.matches").click()
        _wait(browser, lambda d: d.find_element(By.ID, "matches-panel").is_displayed())
        browser.save_screenshot(target)
