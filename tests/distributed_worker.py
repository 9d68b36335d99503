"""Run by tests/test_distributed.py under ``python -m paddle.distributed.launch --nproc_per_node 2``.

Usage: distributed_worker.py CONFIG_JSON OUT_DIR (with this checkout on PYTHONPATH). Trains with run_training and
saves this rank's parameters (and BatchNorm buffers) to OUT_DIR/rank{r}.pdparams.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import paddle

from paddle_chexnet.engine.config import TrainConfig
from paddle_chexnet.engine.trainer import run_training


def main(config_path: str, out_dir: str) -> None:
    config = TrainConfig.from_dict(json.loads(Path(config_path).read_text()))
    result = run_training(config)
    rank = paddle.distributed.get_rank()
    paddle.save(result.network.state_dict(), str(Path(out_dir) / f"rank{rank}.pdparams"))
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({
        "world_size": paddle.distributed.get_world_size(),
        "history": result.history,
        "backend": os.environ.get("PADDLE_DISTRI_BACKEND"),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
