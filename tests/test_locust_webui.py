"""The locust web UI, driven in headless Chromium, shows the TTFT/TPOT/ITL/E2E entries.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (``dev`` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.net import free_port
from bench.load.calibration import calibration_server

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
REQUESTS = 20

pytest.importorskip("selenium", reason="pip install 'servebench[dev]'")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="apt-get install -y chromium chromium-driver",
)


@pytest.fixture(scope="module")
def calib_url() -> Iterator[str]:
    with calibration_server(ttft_ms=20, itl_ms=4) as url:
        yield url


@pytest.fixture
def locust_ui(calib_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``locust -f servers/locustfile.py`` with its web UI on loopback, configured by env vars."""
    (tmp_path / "workload.yaml").write_text("kind: random\ninput_tokens: 8\noutput_tokens: 16\n")
    records = tmp_path / "requests.jsonl"
    port = free_port()
    env = {
        **os.environ,
        "LOCUST_MODEL": "calibration",
        "LOCUST_WORKLOAD_CONFIG": str(tmp_path / "workload.yaml"),
        "LOCUST_MAX_REQUESTS": str(REQUESTS),
        "LOCUST_RECORDS": str(records),
    }
    locustfile = Path(__file__).resolve().parents[1] / "servers" / "locustfile.py"
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--host", calib_url]
    cmd += ["--web-host", "127.0.0.1", "--web-port", str(port)]
    with (tmp_path / "locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(url + "/") is not None, 60, "the locust web UI did not come up")
        yield url, records
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bytes(resp.read())
    except OSError:
        return None


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(what)


def chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def stats_rows(driver: Any) -> dict[tuple[str, str], list[str]]:
    """The rendered statistics table: ``(type, name) -> cells``; empty while the UI is re-rendering it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    rows: dict[tuple[str, str], list[str]] = {}
    try:
        for tr in driver.find_elements(By.CSS_SELECTOR, "table tbody tr"):
            cells = [td.text for td in tr.find_elements(By.CSS_SELECTOR, "td")]
            if len(cells) >= 3:
                rows[(cells[0], cells[1])] = cells
    except StaleElementReferenceException:  # the table refreshes every 2 s; the caller polls again
        return {}
    return rows


def test_web_ui_run_shows_ttft_entries(locust_ui: tuple[str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, records = locust_ui
    driver = chrome()
    try:
        driver.set_page_load_timeout(30)
        driver.get(url + "/")
        wait_for(lambda: driver.find_elements(By.NAME, "userCount"), 30, "no start form")
        for name, value in (("userCount", "2"), ("spawnRate", "2")):
            field = driver.find_element(By.NAME, name)
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(value)
        assert driver.find_element(By.NAME, "maxRequests").get_attribute("value") == str(REQUESTS)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

        rows: dict[tuple[str, str], list[str]] = {}

        def finished() -> bool:
            current = stats_rows(driver)
            row = current.get(("METRIC", "ttft"))
            if row is None or row[2] != str(REQUESTS):
                return False
            rows.update(current)  # one complete rendering of the table
            return True

        wait_for(finished, 90, "the stats table never showed 20 ttft entries")
    finally:
        driver.quit()
    for name in ("ttft", "tpot", "e2e"):
        assert rows[("METRIC", name)][2] == str(REQUESTS) and rows[("METRIC", name)][3] == "0"
    assert rows[("METRIC", "itl")][2] == str(REQUESTS * 15)
    assert rows[("POST", "/v1/chat/completions")][2] == str(REQUESTS)
    assert float(rows[("METRIC", "ttft")][4]) >= 19  # median (ms): at least the scripted 20 ms, rounded
    # the --max-requests bound stopped the run (the UI stays up), and every request was recorded
    wait_for(lambda: json.loads(_get(url + "/stats/requests") or b"{}").get("state") == "stopped", 30, "not stopped")
    lines = records.read_text().splitlines()
    assert len(lines) == REQUESTS and all(json.loads(line)["error"] is None for line in lines)
