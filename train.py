"""Train CheXNet (DenseNet-121, 14 findings) on ChestX-ray14 with ``paddle.Model``.

Examples:
    python train.py --data-dir ChestX-ray14 --pretrained densenet121-a639ec97.pth
    python train.py --data-dir ChestX-ray14 --resume
    python -m paddle.distributed.launch --gpus 0,1,2,3 train.py --data-dir ChestX-ray14 --scale-lr
    python train.py --config run.json   # flags given on the command line override the file
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from paddle_chexnet.conversion.pretrained import IMAGENET_DOWNLOAD
from paddle_chexnet.engine.config import ARCHITECTURES, TrainConfig
from paddle_chexnet.engine.trainer import run_training

DEFAULTS = TrainConfig()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train CheXNet with paddle.Model (defaults follow the paper: Adam 1e-3, batch 16, "
                    "lr / 10 on a validation-loss plateau).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    d = DEFAULTS
    data = parser.add_argument_group("data")
    data.add_argument("--config", default=None,
                      help="JSON (or YAML, with pyyaml) file of settings; flags given here override it")
    data.add_argument("--data-dir", "--data_dir", dest="data_dir", default=d.data_dir, help="data set folder")
    data.add_argument("--image-dir", "--image_dir", dest="image_dir", default=None,
                      help="image folder (default: DATA_DIR/images; NIH's nested images_0NN/images works)")
    data.add_argument("--train-list", "--train_list", dest="train_list", default=None,
                      help="training label list (default: DATA_DIR/labels/train_list.txt)")
    data.add_argument("--val-list", "--val_list", dest="val_list", default=None,
                      help="validation label list (default: DATA_DIR/labels/val_list.txt)")
    data.add_argument("--skip-missing", "--skip_missing", dest="skip_missing", action="store_true",
                      help="drop listed images that are not on disk instead of stopping")
    data.add_argument("--resize", type=int, default=d.resize, help="shorter side before cropping")
    data.add_argument("--crop", type=int, default=d.crop, help="random crop (training), center crop (validation)")
    data.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=d.num_workers,
                      help="data-loader processes")

    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), default=d.arch,
                       help="'tiny' is a few-thousand-parameter DenseNet for a first look on a laptop")
    model.add_argument("--pretrained", default=None,
                       help=f"ImageNet DenseNet-121 for the backbone: a torchvision .pth, a Paddle .pdparams, "
                            f"or '{IMAGENET_DOWNLOAD}' to download Paddle's (needs internet)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=d.epochs, help="total epochs, resumes included")
    optim.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=d.batch_size,
                       help="images per step per process")
    optim.add_argument("--lr", type=float, default=d.lr, help="initial learning rate")
    optim.add_argument("--scale-lr", "--scale_lr", dest="scale_lr", action="store_true",
                       help="multiply --lr by the number of processes (linear scaling rule)")
    optim.add_argument("--optimizer", choices=["adam", "sgd"], default=d.optimizer,
                       help="adam (paper, betas 0.9/0.999) or sgd (momentum)")
    optim.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    optim.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=d.weight_decay,
                       help="L2 weight decay")
    optim.add_argument("--schedule", choices=["plateau", "piecewise", "constant"], default=d.schedule,
                       help="plateau: lr / 10 when the validation loss stops improving; piecewise: x0.1 at "
                            "--milestones")
    optim.add_argument("--plateau-patience", "--plateau_patience", dest="plateau_patience", type=int,
                       default=d.plateau_patience, help="epochs without improvement before the plateau cut")
    optim.add_argument("--milestones", type=int, nargs="+", default=list(d.milestones),
                       help="epochs of the piecewise schedule's cuts")
    optim.add_argument("--class-weighting", "--class_weighting", dest="class_weighting",
                       choices=["none", "pos_weight", "chexnet"], default=d.class_weighting,
                       help="weighted BCE: pos_weight = N_neg/N_pos; chexnet = W+ N_neg/N and W- N_pos/N")
    optim.add_argument("--early-stopping-patience", "--early_stopping_patience", dest="early_stopping_patience",
                       type=int, default=d.early_stopping_patience,
                       help="stop after this many epochs without a better mean validation AUROC (0: never)")
    optim.add_argument("--max-steps-per-epoch", "--max_steps_per_epoch", dest="max_steps_per_epoch", type=int,
                       default=None, help="cut epochs short (demos, smoke tests)")
    optim.add_argument("--amp", action="store_true", help="mixed precision (GPU only)")
    optim.add_argument("--to-static", "--to_static", dest="to_static", action="store_true",
                       help="compile the network to a static graph (paddle.jit.to_static)")

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", "--output_dir", dest="output_dir", default=d.output_dir,
                     help="checkpoints go to OUTPUT_DIR/RUN_NAME/{best,last}.{pdparams,pdopt,json}")
    run.add_argument("--log-dir", "--log_dir", dest="log_dir", default=d.log_dir,
                     help="history.csv (and VisualDL when installed) go to LOG_DIR/RUN_NAME")
    run.add_argument("--run-name", "--run_name", dest="run_name", default=d.run_name, help="name of this run")
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/RUN_NAME/last.*")
    run.add_argument("--seed", type=int, default=d.seed, help="initialisation, data order and augmentation")
    run.add_argument("--device", default=d.device, help="auto, cpu, gpu or gpu:N")
    run.add_argument("--cpu-threads", "--cpu_threads", dest="cpu_threads", type=int, default=d.cpu_threads,
                     help="math threads for CPU operators (default: this process's share of the cores)")
    run.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false",
                     help="no progress bars (logs only)")
    return parser


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON or YAML file (a mapping of TrainConfig fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"--config {path} is YAML: `pip install pyyaml`, or write it as JSON") from None
        values = yaml.safe_load(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {path} line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of settings, not {type(values).__name__}")
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge, by priority: flags given on the command line > ``--config`` file > defaults."""
    values = {k: v for k, v in vars(args).items() if k != "config"}
    if args.config:
        from_file = {k.replace("-", "_"): v for k, v in read_config_file(args.config).items()}
        # a flag's parsed value wins only if the user typed it; compare against a parse without it
        defaults = vars(get_args_parser().parse_args([]))
        for key, value in from_file.items():
            if key in values and values[key] == defaults.get(key):
                values[key] = value
            elif key not in values:
                values[key] = value
        return TrainConfig.from_dict(values, source=str(args.config))
    return TrainConfig.from_dict(values, source="command line")


def main(args: argparse.Namespace) -> int:
    from paddle_chexnet.engine.distributed import is_main_process

    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("train")
    from paddle_chexnet.conversion.pretrained import PretrainedDownloadError
    from paddle_chexnet.engine.callbacks import NonFiniteLossError
    from paddle_chexnet.engine.checkpoint import CheckpointError

    try:
        config = config_from_args(args)
        result = run_training(config)
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return 2
    # problems the user can fix (paths, files, settings): the message says what, no traceback needed
    except (OSError, ValueError, ImportError, CheckpointError, PretrainedDownloadError) as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    if is_main_process():
        log.info("best mean validation AUROC %.4f at epoch %d; best weights: %s; history: %s",
                 result.best_metric, result.best_epoch, result.best_checkpoint, result.log_dir / "history.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
