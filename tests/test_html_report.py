"""report.html: self-contained (no network), and it renders in a real headless Chromium (skipped when absent).

The browser is driven over the DevTools protocol (``--remote-debugging-pipe``): every
request the page makes is seen as ``Network.requestWillBeSent``, so "nothing fetched"
is checked on the page's own requests, not on the browser's background traffic. Host
name resolution is disabled (``--host-resolver-rules``) so that no request of the
browser leaves the machine either.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.bootstrap import Resampler, bootstrap_auroc, bootstrap_roc_band
from paddle_chexnet.evaluation.calibration import reliability_per_class
from paddle_chexnet.evaluation.html_report import ReportData, render_report, write_report
from paddle_chexnet.evaluation.operating_points import choose_thresholds, operating_points

CHROMIUM = Path("/usr/bin/chromium")
CLASSES = CLASS_NAMES[:4]


def make_report_data(full: bool = True) -> ReportData:
    rng = np.random.default_rng(0)
    names = [f"{p:08d}_{f:03d}.png" for p in range(1, 101) for f in range(int(rng.integers(1, 4)))]
    labels = (rng.random((len(names), len(CLASSES))) < 0.25).astype(float)
    labels[::13, 1] = np.nan
    probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.5 * np.nan_to_num(labels) - 1)))
    if not full:
        return ReportData(CLASSES, labels, probs)
    resampler = Resampler.from_names(names, "patient", 100, seed=0)
    auroc = bootstrap_auroc(labels, probs, resampler, CLASSES, unit="patient")
    band = bootstrap_roc_band(labels, probs, resampler)
    choice = choose_thresholds(labels, probs, "youden", CLASSES)
    points = operating_points(labels, probs, choice.thresholds, resampler, CLASSES, rule="youden")
    return ReportData(CLASSES, labels, probs, auroc, band, points, reliability_per_class(labels, probs),
                      title="Test <report>", details={"predictions": "preds.csv", "images": str(len(names))})


def test_page_is_self_contained_and_complete(tmp_path):
    page = write_report(tmp_path / "out" / "report.html", make_report_data()).read_text()
    assert page.startswith("<!DOCTYPE html>")
    for forbidden in ("http:", "https:", "src=", "href=", "url(", "@import", "<script", "<link", "<img", "<iframe"):
        assert forbidden not in page.lower(), forbidden
    assert len(re.findall(r'<tr class="class-row"', page)) == len(CLASSES)
    assert len(re.findall(r'<tr class="op-row"', page)) == len(CLASSES)
    assert len(re.findall(r'<tr class="mean"', page)) == 1
    for cls in ("roc-plot", "pr-plot", "reliability-plot"):
        assert len(re.findall(f'<svg class="{cls}"', page)) == len(CLASSES)
    assert len(re.findall(r'<polygon class="band"', page)) == len(CLASSES)
    assert "Test &lt;report&gt;" in page  # escaped
    assert not list((tmp_path / "out").glob(".*"))  # atomic write left no temporary file


def test_minimal_page_without_intervals():
    page = render_report(make_report_data(full=False))
    assert "CI</th>" not in page and "ECE" not in page and 'class="band"' not in page
    assert len(re.findall(r'<svg class="roc-plot"', page)) == len(CLASSES)


class DevTools:
    """A headless Chromium driven over --remote-debugging-pipe (NUL-separated JSON messages)."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             "--disable-default-apps", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, pass_fds=(3, 4),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                return None
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline - time.monotonic())
            if reply is None:
                break
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method}")

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self._read(deadline - time.monotonic())
            if event is None:
                break
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(f"no {method}")

    def open(self, url: str) -> str:
        """Load ``url`` in a new page with request logging on; returns the page's session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Network.enable", session=session)
        self.call("Page.enable", session=session)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        return session

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def evaluate(self, expression: str, session: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture()
def browser(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    devtools = DevTools(tmp_path / "profile")
    yield devtools
    devtools.close()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_report_renders_in_chromium_without_network(tmp_path, browser):
    # the check can fail: a page that fetches an image is caught
    canary = tmp_path / "canary.html"
    canary.write_text('<!DOCTYPE html><html><body><img src="http://canary.invalid/x.png"></body></html>')
    browser.open(canary.as_uri())
    assert any("canary.invalid" in url for url in browser.requested_urls())

    path = write_report(tmp_path / "report.html", make_report_data())
    session = browser.open(path.as_uri())
    assert browser.requested_urls() == [path.as_uri()]  # the page itself, nothing else
    rows = browser.evaluate("Array.from(document.querySelectorAll('#auroc-table tr.class-row'))"
                            ".map(r => r.cells[0].textContent)", session)
    assert rows == list(CLASSES)
    op_rows = browser.evaluate("document.querySelectorAll('#operating-table tr.op-row').length", session)
    assert op_rows == len(CLASSES)
    # every figure is laid out with its size, and holds its curve
    sizes = browser.evaluate("Array.from(document.querySelectorAll('svg')).map(s => {"
                             "const r = s.getBoundingClientRect(); return [s.getAttribute('class'), r.width, "
                             "r.height, s.querySelectorAll('polyline').length]; })", session)
    assert len(sizes) == 3 * len(CLASSES)
    assert all(w == 230 and h == 220 and lines >= 2 for _, w, h, lines in sizes)
    band_area = browser.evaluate("Array.from(document.querySelectorAll('polygon.band'))"
                                 ".map(p => p.getBBox().width * p.getBBox().height)", session)
    assert len(band_area) == len(CLASSES) and min(band_area) > 100
    title = browser.evaluate("document.title", session)
    assert title == "Test <report>"


def test_class_with_one_label_value_is_shown_as_not_available():
    data = make_report_data()
    data.labels[:, 2] = 0.0  # no positive left: AUROC, AP and the curves of this class are undefined
    data.auroc = bootstrap_auroc(data.labels, data.scores, Resampler(np.arange(len(data.labels)), 20, seed=0),
                                 CLASSES, warn=False)
    page = render_report(data)
    row = re.search(r'<tr class="class-row" data-label="Effusion">(.*?)</tr>', page).group(1)
    assert row.count("n/a") == 2  # AUROC and AP
    assert "Mean (3 of 4 classes)" in page
