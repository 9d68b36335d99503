"""The web app: started on a free port and called through gradio_client (probabilities equal
tools/predict.py's, bad uploads return a message), and a real headless Chromium that loads the page,
uploads an X-ray and shows the result (skipped when /usr/bin/chromium is absent)."""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_weights as conftest_write_weights
from PIL import Image

from paddle_chexnet.data.labels import CLASS_NAMES

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

CHROMIUM = Path("/usr/bin/chromium")
THRESHOLDS = {name: 0.5 for name in CLASS_NAMES}


def write_weights(folder: Path, thresholds: dict | None = THRESHOLDS) -> Path:
    changes = {} if thresholds is None else {"thresholds": thresholds, "threshold_rule": "youden"}
    return conftest_write_weights(folder, seed=3, **changes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(weights: Path, work_dir: Path, **kwargs):
    from paddle_chexnet.app.ui import build_app, launch

    demo = build_app(weights, device="cpu", work_dir=work_dir, **kwargs)
    port = free_port()
    launch(demo, "127.0.0.1", port, block=False)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def app(weights, tmp_path_factory):
    demo, url = start_app(weights, tmp_path_factory.mktemp("app"), examples=2)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app[1], verbose=False)


def xray_png(folder: Path, size: int = 320, index: int = 1) -> Path:
    from paddle_chexnet.data.synthetic import render_example

    pixels, _, _ = render_example(7, index, size)
    path = folder / f"xray_{index}.png"
    Image.fromarray(pixels, mode="L").save(path)
    return path


def predict_cli(weights: Path, image: Path, out: Path) -> np.ndarray:
    """What tools/predict.py computes for the file (its own code path, full precision)."""
    from paddle_chexnet.cli.predict import get_args_parser, run

    args = get_args_parser().parse_args([str(image), "--weights", str(weights), "--output-dir", str(out),
                                         "--quiet", "--no-overlays", "--device", "cpu"])
    ((_, probabilities),) = run(args).predictions
    return probabilities


def test_predict_api_equals_tools_predict(client, weights, tmp_path):
    image = xray_png(tmp_path, 300)
    got = client.predict(gradio_client.handle_file(str(image)), api_name="/predict")
    assert list(got) == list(CLASS_NAMES)
    expected = predict_cli(weights, image, tmp_path / "predict")
    np.testing.assert_allclose(np.array([got[n] for n in CLASS_NAMES]), expected, rtol=0, atol=1e-6)


def test_predict_api_on_a_real_xray(client, weights, tmp_path, sample_dir):
    image = sorted((sample_dir / "images").glob("*.png"))[0]
    got = client.predict(gradio_client.handle_file(str(image)), api_name="/predict")
    expected = predict_cli(weights, image, tmp_path / "predict")
    np.testing.assert_allclose(np.array([got[n] for n in CLASS_NAMES]), expected, rtol=0, atol=1e-6)


def test_the_api_is_listed(client):
    assert "/predict" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def _dicom_without_pixels(path: Path) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report: no image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientName = "Test^Report"
    ds.Modality = "SR"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.mark.parametrize("kind, message", [
    ("text", "not an image"),
    ("dicom", "no pixel data"),
    ("truncated", "cannot be used"),
    ("large", "files up to"),
])
def test_bad_uploads_return_a_message(client, tmp_path, kind, message, monkeypatch):
    from paddle_chexnet.app import service

    if kind == "text":
        path = tmp_path / "notes.png"
        path.write_text("not a picture")
    elif kind == "dicom":
        path = _dicom_without_pixels(tmp_path / "report.dcm")
    elif kind == "truncated":
        full = xray_png(tmp_path, 256)
        path = tmp_path / "truncated.png"
        path.write_bytes(full.read_bytes()[:600])
    else:
        path = xray_png(tmp_path, 256)
        monkeypatch.setattr(service, "MAX_UPLOAD_BYTES", 1000)  # the app runs in this process
    with pytest.raises(Exception) as caught:
        client.predict(gradio_client.handle_file(str(path)), api_name="/predict")
    assert message in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_service_result_files(weights, tmp_path):
    from paddle_chexnet.app.service import XrayService
    from paddle_chexnet.localization.predict import display_scale

    service = XrayService.from_weights(weights, "cpu")
    analysis = service.analyse(xray_png(tmp_path, 256))
    probabilities = [f.probability for f in analysis.findings]
    assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 14
    shown = service.heatmap(analysis, analysis.findings[0].name, "gradcam")
    scale = display_scale(analysis.image.size)  # small pictures are drawn enlarged, as tools/predict.py does
    assert shown.overlay.size == (analysis.image.width * scale, analysis.image.height * scale)
    assert all(0 <= b.x and b.x2 <= analysis.image.width and b.score <= 1 for b in shown.boxes) and shown.boxes
    record = json.loads(service.result_json(analysis, shown))
    assert record["threshold_rule"] == "youden" and record["heatmap"]["method"] == "gradcam"
    assert [f["positive"] for f in record["findings"]] == [p >= 0.5 for p in probabilities]
    rows = service.result_csv(analysis).splitlines()
    assert rows[0] == "image,finding,probability,threshold,positive" and len(rows) == 15
    no_thresholds = XrayService.from_weights(write_weights(tmp_path / "plain", thresholds=None), "cpu")
    assert "no thresholds" in no_thresholds.describe()
    assert all(f.positive is None for f in no_thresholds.analyse(xray_png(tmp_path, 256)).findings)


def test_service_applies_the_checkpoint_temperatures(tmp_path):
    """Temperatures stored by eval.py --calibrate --save-to-weights: the app's probabilities are calibrated,
    equal to tools/predict.py's, and the calls use them."""
    from paddle_chexnet.app.service import XrayService
    from paddle_chexnet.evaluation.calibration import apply_temperature
    from paddle_chexnet.models.spec import update_sidecar_spec

    plain = XrayService.from_weights(write_weights(tmp_path / "plain"), "cpu")
    weights = write_weights(tmp_path / "calibrated")
    temperatures = {name: 0.4 + 0.1 * i for i, name in enumerate(CLASS_NAMES)}
    update_sidecar_spec(weights, temperatures=temperatures)
    service = XrayService.from_weights(weights, "cpu")
    image = xray_png(tmp_path, 256)
    raw = plain.analyse(image).probabilities
    analysis = service.analyse(image)
    expected = apply_temperature(raw, list(temperatures.values()))
    np.testing.assert_allclose(analysis.probabilities, expected, rtol=0, atol=1e-6)
    assert not np.allclose(analysis.probabilities, raw, atol=1e-3)
    np.testing.assert_allclose(analysis.probabilities, predict_cli(weights, image, tmp_path / "predict"), atol=1e-6)
    record = json.loads(service.result_json(analysis))
    assert record["calibrated"] is True and json.loads(plain.result_json(plain.analyse(image)))["calibrated"] is False
    assert [f["positive"] for f in record["findings"]] == [f["probability"] >= 0.5 for f in record["findings"]]
    assert "calibrated probabilities" in service.describe() and "calibrated" not in plain.describe()


# --------------------------------------------------------------------------- the browser
class Chromium:
    """Headless Chromium driven through the DevTools protocol over --remote-debugging-pipe (no extra library)."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1500) -> None:
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--host-resolver-rules='MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "--hide-scrollbars", "--remote-debugging-pipe", "about:blank"]
        script = f"exec {CHROMIUM} {' '.join(flags)} 3<&{commands_r} 4>&{replies_w}"
        # bash: dash's redirections take one-digit descriptors only
        self.process = subprocess.Popen(["bash", "-c", script], pass_fds=(commands_r, replies_w),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(replies_w)
        self._next_id = 0
        self._results: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._replies, "rb", buffering=0) as stream:
            while True:
                chunk = stream.read(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\0" in buffer:
                    message, buffer = buffer.split(b"\0", 1)
                    reply = json.loads(message)
                    if "id" in reply:
                        self._results.put(reply)

    def send(self, method: str, session: bool = False, timeout: float = 30.0, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._results.get(timeout=max(0.1, deadline - time.monotonic()))
            if reply["id"] == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"the page never satisfied: {expression}")

    def open(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)

    def upload(self, selector: str, path: Path) -> None:
        found = self.send("Runtime.evaluate", session=True, expression=f"document.querySelector({selector!r})")
        object_id = found.get("result", {}).get("objectId")
        if not object_id:
            raise RuntimeError(f"no element {selector} on the page")
        self.send("DOM.setFileInputFiles", session=True, objectId=object_id, files=[str(path)])

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # already gone
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._commands)


def browse(url: str, image: Path, screenshot: Path, bad_file: Path | None = None) -> dict:
    """Load the app, upload ``image``, wait for its result, screenshot it; then (optionally) a bad file."""
    profile = Path(tempfile.mkdtemp(prefix="chexnet-chromium-"))
    browser = Chromium(profile)
    try:
        browser.open(url)
        browser.wait_for("document.querySelector('#upload input[type=file]') !== null")
        browser.upload("#upload input[type=file]", image)
        status = browser.wait_for(
            "(() => { const s = document.querySelector('#status'); return s && s.innerText.includes('highest') "
            "? s.innerText : null })()")
        browser.wait_for("(() => { const i = document.querySelector('#overlay img'); "
                         "return i && i.complete && i.naturalWidth > 0 })()")
        seen = {
            "status": status,
            "findings": browser.evaluate("document.querySelector('#findings').innerText"),
            "disclaimer": browser.evaluate("document.querySelector('#disclaimer').innerText"),
            "overlay_width": browser.evaluate("document.querySelector('#overlay img').naturalWidth"),
            "downloads": browser.evaluate("document.querySelector('#downloads').innerText"),
        }
        time.sleep(0.5)  # let the last images paint
        browser.screenshot(screenshot)
        if bad_file is not None:
            browser.evaluate("document.querySelector('#upload button[aria-label=Clear]').click()")
            browser.wait_for("document.querySelector('#upload input[type=file]') !== null", timeout=20)
            browser.upload("#upload input[type=file]", bad_file)
            seen["bad_status"] = browser.wait_for(
                "(() => { const s = document.querySelector('#status'); return s && s.innerText.includes("
                "'Cannot use') ? s.innerText : null })()")
        return seen
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_browser_uploads_an_xray_and_sees_the_result(app, tmp_path):
    _, url = app
    image = xray_png(tmp_path, 512, index=3)
    bad = tmp_path / "letter.jpg"
    bad.write_text("Dear colleague, this is not an X-ray.")
    seen = browse(url, image, tmp_path / "app.png", bad_file=bad)  # the screenshot is kept in tmp_path
    assert "xray_3.png" in seen["status"] and "youden" in seen["status"]
    for name in CLASS_NAMES:
        assert name in seen["findings"]
    assert "POSITIVE" in seen["findings"] or "negative" in seen["findings"]
    assert "not a medical device" in seen["disclaimer"]
    assert seen["overlay_width"] >= 384
    downloads = seen["downloads"].replace("\n", "")
    assert "xray_3_findings.csv" in downloads and "xray_3_findings.json" in downloads
    assert "not an image" in seen["bad_status"] and "Traceback" not in seen["bad_status"]
    shot = Image.open(tmp_path / "app.png")
    assert shot.size == (1280, 1500)
    assert np.asarray(shot.convert("L")).std() > 10  # something was drawn, not a blank page


@pytest.mark.parametrize("argv, message", [
    (["--weights", "no/such.pdparams"], "does not exist"),
    (["--port", "70000"], "--port"),
])
def test_app_command_refusals(weights, argv, message, caplog):
    from paddle_chexnet.cli.app import entry

    if "--weights" not in argv:
        argv = ["--weights", str(weights), *argv]
    assert entry(argv) == 1
    assert message in caplog.text
