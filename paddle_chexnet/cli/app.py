"""Serve the web app for one model: upload an X-ray, see its findings, heatmaps and boxes.

    python app.py --weights W.pdparams [--host 127.0.0.1] [--port 7860] [--device auto]
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from paddle_chexnet.cli.common import HelpFormatter, run_command

logger = logging.getLogger("app")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A Gradio web app for a CheXNet model: findings, thresholds, heatmaps, boxes, CSV/JSON, "
                    "and a /predict API. Research use only, not a medical device.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--weights", type=Path, required=True, help="a .pdparams of this project")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 serves other machines: mind who can reach it)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--device", default="auto", help="auto (a GPU when Paddle sees one), cpu, gpu or gpu:N")
    parser.add_argument("--examples", type=int, default=3, help="synthetic example X-rays offered on the page")
    parser.add_argument("--verbose", action="store_true", help="log details")
    return parser


def main(args: argparse.Namespace) -> int:
    from paddle_chexnet.errors import UserError
    from paddle_chexnet.models.state_dict import require_weights_file

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    require_weights_file(args.weights)
    try:
        from paddle_chexnet.app.ui import build_app, launch
    except ImportError as exc:
        raise ImportError(f"the app needs Gradio ({exc}); pip install -r requirements-app.txt") from None
    demo = build_app(args.weights, device=args.device, examples=args.examples)
    logger.info("serving %s on http://%s:%d (Ctrl-C stops)", args.weights, args.host, args.port)
    launch(demo, args.host, args.port, block=True)
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)
