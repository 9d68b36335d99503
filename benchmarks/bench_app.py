"""Latency of the web app: a 1024x1024 PNG uploaded, probabilities and one heatmap back.

The app (``paddle_chexnet.app``) is served in a child process with a DenseNet-121 (random weights: the
speed does not depend on them); a ``gradio_client`` in this process uploads each image through the
page's own upload event (the one the browser triggers) and waits for the findings table and the CAM
overlay of the top finding, downloaded. Each upload is timed from the call to the last byte of the
overlay. Also timed in-process, without the web: reading, the forward pass, the heatmap, and the
overlay's JPEG encoding.

Example:
    python benchmarks/bench_app.py --images ../shared/data/chestxray14-sample/images --count 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine_info import cpu_model  # benchmarks/machine_info.py (run as a script from any folder)

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 2.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "chestxray14-sample" / "images"),
                        help="1024x1024 PNGs to upload (synthetic ones are drawn when the folder is absent)")
    parser.add_argument("--count", type=int, default=10, help="uploads to time (after one warm-up)")
    parser.add_argument("--arch", default="densenet121", help="the network served")
    parser.add_argument("--method", default="cam", help="the heatmap method of the first overlay")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--serve", nargs=3, metavar=("WEIGHTS", "PORT", "WORK"), default=None,
                        help=argparse.SUPPRESS)
    return parser


def _weights(folder: Path, arch: str) -> Path:
    import paddle

    from paddle_chexnet.models.registry import build_network
    from paddle_chexnet.models.spec import spec_record

    paddle.seed(0)
    net = build_network(arch, 14)
    path = folder / f"{arch}.pdparams"
    paddle.save(net.state_dict(), str(path))
    path.with_suffix(".json").write_text(json.dumps(spec_record(net.spec)))
    return path


def _images(folder: str, count: int, work: Path) -> list[Path]:
    found = sorted(Path(folder).glob("*.png"))[:count + 1] if Path(folder).is_dir() else []
    if len(found) >= count + 1:
        return found
    from PIL import Image

    from paddle_chexnet.data.synthetic import render_example

    paths = []
    for i in range(count + 1):
        pixels, _, _ = render_example(11, i, 1024)
        path = work / f"synthetic_{i}.png"
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(path)
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(weights: str, port: str, work: str) -> None:
    from paddle_chexnet.app.ui import build_app, launch

    launch(build_app(weights, device="cpu", work_dir=work, examples=0), "127.0.0.1", int(port), block=True)


def in_process(weights: Path, images: list[Path], method: str) -> dict[str, list[float]]:
    import io

    from paddle_chexnet.app.service import XrayService
    from paddle_chexnet.localization.predict import prepare_input

    service = XrayService.from_weights(weights, "cpu")
    times: dict[str, list[float]] = {"read": [], "probabilities": [], "heatmap": [], "encode": []}
    service.analyse(images[0])  # warm-up
    for path in images[1:]:
        t0 = time.perf_counter()
        image = service.read_upload(path)
        prepare_input(image, service.resize, None)
        t1 = time.perf_counter()
        analysis = service.analyse(path)
        t2 = time.perf_counter()
        shown = service.heatmap(analysis, analysis.findings[0].name, method)
        t3 = time.perf_counter()
        shown.overlay.save(io.BytesIO(), format="JPEG")
        t4 = time.perf_counter()
        times["read"].append(t1 - t0)
        times["probabilities"].append(t2 - t1)  # analyse reads again: includes a read
        times["heatmap"].append(t3 - t2)
        times["encode"].append(t4 - t3)
    return times


def main(args: argparse.Namespace) -> int:
    if args.serve:
        serve(*args.serve)
        return 0
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="bench-app-"))
    weights = _weights(work, args.arch)
    images = _images(args.images, args.count, work)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(weights), str(port), str(work / "app")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        client = None
        while client is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the app did not start") from None
                time.sleep(1)
        latencies = []
        for i, path in enumerate(images):
            start = time.perf_counter()
            outputs = client.predict(handle_file(str(path)), args.method, api_name="/analyse")
            overlay = outputs[3]
            assert overlay and Path(overlay if isinstance(overlay, str) else overlay["path"]).is_file(), outputs
            if i:  # the first is the warm-up
                latencies.append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=30)
    parts = in_process(weights, images, args.method)

    load = os.getloadavg()
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {cpu_model()}, {platform.python_version()}",
        "load_average": [round(v, 2) for v in load],
        "arch": args.arch, "method": args.method, "images": str(args.images), "uploads": len(latencies),
        "latency_s": {"median": statistics.median(latencies), "max": max(latencies), "all": latencies},
        "in_process_median_s": {k: statistics.median(v) for k, v in parts.items()},
        "goal_s": GOAL_SECONDS,
    }
    print(f"Date: {result['date']}. Machine: {result['machine']}; load average {load[0]:.1f}.")
    print(f"Command: python benchmarks/bench_app.py --images {args.images} --count {args.count}")
    print()
    print("| upload -> probabilities + one heatmap (1024x1024 PNG, gradio_client, same machine) | seconds |")
    print("|---|---|")
    print(f"| median of {len(latencies)} uploads | {result['latency_s']['median']:.2f} |")
    print(f"| slowest | {result['latency_s']['max']:.2f} |")
    for key, value in result["in_process_median_s"].items():
        print(f"| in-process {key} (median) | {value:.3f} |")
    met = result["latency_s"]["max"] <= GOAL_SECONDS
    print(f"\nGoal (at most {GOAL_SECONDS:.0f} s): {'met' if met else 'NOT met'} "
          f"(slowest {result['latency_s']['max']:.2f} s, median {result['latency_s']['median']:.2f} s).")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
