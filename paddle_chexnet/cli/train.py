"""``train.py``: train CheXNet (or any registered network) with ``paddle.Model``.

Every flag is a :class:`~paddle_chexnet.engine.config.TrainConfig` field; a
``--config`` file (JSON or YAML) sets any of them, and a flag typed on the
command line wins over the file.

Examples:
    python train.py --data-dir ChestX-ray14 --pretrained densenet121-a639ec97.pth
    python train.py --data-dir ChestX-ray14 --resume
    python -m paddle.distributed.launch --gpus 0,1,2,3 train.py --data-dir ChestX-ray14 --scale-lr
    python train.py --config configs/demo.json --epochs 2
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from paddle_chexnet.cli.common import HelpFormatter, run_command, setup_logging

logger = logging.getLogger("paddle_chexnet.train")


def get_args_parser() -> argparse.ArgumentParser:
    from paddle_chexnet.engine.config import add_config_arguments

    parser = argparse.ArgumentParser(
        description="Train CheXNet with paddle.Model (defaults follow the paper: DenseNet-121, Adam 1e-3, batch 16, "
                    "lr / 10 on a validation-loss plateau).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", default=None,
                        help="JSON (or YAML, with pyyaml) file of settings; flags typed here win over it")
    parser.add_argument("--verbose", action="store_true", help="debug logging (and tracebacks of errors)")
    add_config_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from paddle_chexnet.engine.callbacks import NonFiniteLossError
    from paddle_chexnet.engine.checkpoint import CheckpointError, NonFiniteCheckpointError
    from paddle_chexnet.engine.config import config_from_sources
    from paddle_chexnet.engine.distributed import is_main_process
    from paddle_chexnet.engine.trainer import run_training

    setup_logging(args.verbose, main_process=is_main_process())
    typed = {k: v for k, v in vars(args).items() if k not in ("config", "verbose")}
    config = config_from_sources(typed, args.config)
    try:
        result = run_training(config)
    except (NonFiniteLossError, NonFiniteCheckpointError) as exc:
        logger.error("error: %s", exc)
        return 2
    except CheckpointError as exc:
        logger.error("error: %s", exc)
        return 1
    if is_main_process():
        logger.info("best mean validation AUROC %.4f at epoch %d; best weights: %s; history: %s",
                    result.best_metric, result.best_epoch, result.best_checkpoint, result.log_dir / "history.csv")
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser, main, argv)
