"""The web page in a real headless Chromium against a real daemon and a real mosquitto.

The daemon plays the bundled SYNTHETIC demo recording at real-time pace (fault from
15 s to 25 s). The test logs in (after a wrong password), sees the machine on the
overview, waits on the machine page for the alert and its clip, checks that the
browser loads the clip and knows its duration, changes the threshold and follows
``threshold/state`` on the broker, marks the alert a false alarm and finds the
verdict in the state folder and on ``<prefix>/feedback``, and checks that a POST
without the CSRF token is refused. With ``EDGE_MONITOR_SCREENSHOTS=DIR`` it also
saves the screenshots used in the docs.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers.broker import Collector, Mosquitto, free_port, mosquitto, wait_until  # noqa: F401
from tests.helpers.browser import browser_missing, chromium_driver
from tests.helpers.daemon import DEMO_WAV, DaemonProcess, write_config

PREFIX = "e2e/web-fan"
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "browser present")


def _config(tmp_path: Path, broker: Mosquitto, port: int) -> Path:
    path = write_config(tmp_path, machine_id="web-fan", source={"type": "file", "path": str(DEMO_WAV),
                                                                "realtime": True, "loop": True},
                        mqtt={"host": broker.host, "port": broker.port, "prefix": PREFIX})
    data = yaml.safe_load(path.read_text())
    (tmp_path / "web-password").write_text(PASSWORD + "\n")
    os.chmod(tmp_path / "web-password", 0o600)
    data["machine"]["name"] = "Demo fan (synthetic)"
    data["web"] = {"enabled": True, "host": "127.0.0.1", "port": port, "password_file": str(tmp_path / "web-password")}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _text(driver, by: str, selector: str) -> str:
    """Text of the first matching element, or "" while the page that has it is still loading."""
    from selenium.common.exceptions import WebDriverException

    try:
        found = driver.find_elements(by, selector)
        return found[0].text if found else ""
    except WebDriverException:  # stale element or a page in the middle of loading
        return ""


def _wait_text(driver, by: str, selector: str, needle: str) -> None:
    """Wait until the page shown after a click has ``needle`` in the element (clicks don't wait for the load)."""
    wait_until(lambda: needle in _text(driver, by, selector), 20, interval_s=0.1,
               what=f"{needle!r} in {selector}")


def _shot(driver, name: str) -> None:
    folder = os.environ.get("EDGE_MONITOR_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _wait_score_changes(driver) -> None:
    """The live score on the machine page changes by itself (events or polling)."""
    from selenium.webdriver.common.by import By

    first = _text(driver, By.CSS_SELECTOR, '[data-live] [data-field="score"]')
    wait_until(lambda: _text(driver, By.CSS_SELECTOR, '[data-live] [data-field="score"]') not in ("", first), 10,
               interval_s=0.1, what="the live score to change")


def _fall_back_to_polling(driver, port: int) -> None:
    """With every event stream taken, the machine page polls instead and its score still moves."""
    from selenium.webdriver.common.by import By

    from edge_monitor.web.app import MAX_EVENT_STREAMS
    from edge_monitor.web.auth import COOKIE_NAME

    driver.get(f"http://127.0.0.1:{port}/")  # the machine page's own stream ends with it
    cookie = f"{COOKIE_NAME}={driver.get_cookie(COOKIE_NAME)['value']}"
    held = []
    try:
        for _ in range(MAX_EVENT_STREAMS + 2):  # the closed page's stream may not be noticed at once
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/api/web-fan/events", headers={"Cookie": cookie})
            resp = conn.getresponse()
            held.append(conn)
            if resp.status == 503:
                break
            assert resp.status == 200
        else:
            raise AssertionError("event streams were never refused")
        driver.get(f"http://127.0.0.1:{port}/machine/web-fan")
        live = driver.find_element(By.CSS_SELECTOR, "[data-live]")
        wait_until(lambda: live.get_attribute("data-updates") == "polling", 10, what="the page falling back to polling")
        _wait_score_changes(driver)
    finally:
        for conn in held:
            conn.close()


def test_page_in_a_real_browser(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from selenium.webdriver.common.by import By

    collector = Collector(mosquitto, [f"{PREFIX}/#"])
    port = free_port()
    daemon = DaemonProcess(_config(tmp_path, mosquitto, port), tmp_path / "daemon.log")
    driver = chromium_driver(1000, 1060)  # tall enough for the alert row and its spectrogram in the screenshots
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "web page on" in daemon.log_text() or not daemon.running, 30, what="the web server")
        assert daemon.running, daemon.log_text()

        driver.get(base + "/")
        assert driver.current_url == base + "/login"
        driver.find_element(By.ID, "password").send_keys("wrong password")
        driver.find_element(By.ID, "login").click()
        _wait_text(driver, By.ID, "login-error", "Wrong password")
        assert driver.find_elements(By.CSS_SELECTOR, "[data-machine]") == []

        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        card = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, '[data-machine="web-fan"]'), 10,
                          what="the overview card")[0]
        assert "Demo fan (synthetic)" in card.text
        wait_until(lambda: card.find_element(By.CSS_SELECTOR, '[data-field="score"]').text not in ("", "—"), 20,
                   what="a score on the overview")

        driver.find_element(By.LINK_TEXT, "Demo fan (synthetic)").click()
        wait_until(lambda: driver.current_url == base + "/machine/web-fan", 20, what="the machine page")
        live = driver.find_element(By.CSS_SELECTOR, '[data-live]')
        wait_until(lambda: live.get_attribute("data-updates") == "events", 10, what="the live score as events")
        _wait_score_changes(driver)
        # the page refreshes its alert table by itself when the alert and its clip arrive
        audio = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#alerts-table audio"), 60,
                           interval_s=0.5, what="an alert with its clip on the machine page")[0]
        duration = wait_until(lambda: driver.execute_script(
            "var a = arguments[0]; if (a.readyState < 1) { a.load(); return null; } return a.duration;", audio),
            20, interval_s=0.3, what="the clip's duration in the browser")
        assert 3.5 <= duration <= 8.0, duration  # 2 s before the trigger + 2 s after, plus the trigger lookback
        state = driver.find_element(By.CSS_SELECTOR, '[data-field="state"]').text
        assert state in ("anomaly", "normal")
        # the clip's log-mel spectrogram (a PNG of 128 mel rows for this model; a placeholder would be 300x48)
        size = wait_until(lambda: driver.execute_script(
            "var i = document.querySelector('#alerts-table img.spectrogram'); if (!i) { return null; }"
            "i.scrollIntoView(); return i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null;"),
            20, interval_s=0.3, what="the clip's spectrogram in the browser")
        assert size[1] == 128 and 100 <= size[0] <= 300, size  # 32 ms columns over the 3.5-8 s clip
        _shot(driver, "web-machine.png")

        field = driver.find_element(By.ID, "threshold-input")
        field.clear()
        field.send_keys("2.75")
        driver.find_element(By.ID, "threshold-set").click()
        _wait_text(driver, By.ID, "message", "Threshold changed")
        wait_until(lambda: (collector.last(f"{PREFIX}/threshold/state") or None) and
                   collector.last(f"{PREFIX}/threshold/state").payload == b"2.75", 10,
                   what="threshold/state 2.75 on the broker")
        saved = json.loads((tmp_path / "state" / "threshold-web-fan.json").read_text())
        assert saved["threshold"] == 2.75

        row = driver.find_element(By.CSS_SELECTOR, "#alerts-table tr.alert-row")
        episode = row.get_attribute("id")[len("alert-"):]
        row.find_element(By.NAME, "note").send_keys("door slammed")
        row.find_element(By.CSS_SELECTOR, 'button[value="false_alarm"]').click()
        _wait_text(driver, By.ID, "message", "Feedback saved")
        assert "1 false alarm(s)" in driver.find_element(By.CSS_SELECTOR, ".fb-false").text
        stored = json.loads((tmp_path / "state" / "feedback-web-fan.json").read_text())
        assert stored["alerts"][episode]["verdict"] == "false_alarm"
        assert stored["alerts"][episode]["note"] == "door slammed"
        published = collector.wait_count(f"{PREFIX}/feedback", 1, 10)[0].json()
        assert (published["episode"], published["verdict"], published["note"]) == \
            (episode, "false_alarm", "door slammed")
        assert published["clip"].endswith(".wav")
        schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "schemas" / "feedback.schema.json")
                            .read_text())
        jsonschema.validate(published, schema, cls=jsonschema.Draft202012Validator)
        _shot(driver, "web-alert.png")

        _fall_back_to_polling(driver, port)

        driver.get(base + "/")
        card = driver.find_element(By.CSS_SELECTOR, '[data-machine="web-fan"]')
        assert "1 false alarm(s)" in card.text and "connected, outbox 0" in card.text
        assert card.get_attribute("data-updates") == "overview"  # every card from one /api answer every 2 s
        shown = _text(driver, By.CSS_SELECTOR, '[data-machine="web-fan"] [data-field="score"]')
        wait_until(lambda: _text(driver, By.CSS_SELECTOR, '[data-machine="web-fan"] [data-field="score"]')
                   not in ("", shown), 15, interval_s=0.2, what="the overview's score to change")
        assert card.find_element(By.CSS_SELECTOR, "img.chart").get_attribute("naturalWidth") == "600"
        _shot(driver, "web-overview.png")

        status = driver.execute_async_script(
            "var done = arguments[0]; fetch('/machine/web-fan/threshold', {method: 'POST', credentials: "
            "'same-origin', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'threshold=9'})"
            ".then(function (r) { done(r.status); });")
        assert status == 403
        assert collector.last(f"{PREFIX}/threshold/state").payload == b"2.75"
    finally:
        driver.quit()
        rc = daemon.stop()
        collector.close()
    assert rc == 0, daemon.log_text()
