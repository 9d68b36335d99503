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


def record_cache_reads(out_dir: str) -> None:
    """Log every image this process reads from an image cache (RECORD_CACHE_READS=1), to check the sharding."""
    from paddle_chexnet.data.cache import ImageCache

    original = ImageCache.read_image
    log = Path(out_dir) / f"reads{paddle.distributed.get_rank()}.txt"

    def read_image(self, key):
        with open(log, "a") as handle:
            handle.write(f"{Path(key).as_posix()}\n")
        return original(self, key)

    ImageCache.read_image = read_image


def main(config_path: str, out_dir: str) -> None:
    config = TrainConfig.from_dict(json.loads(Path(config_path).read_text()))
    if os.environ.get("RECORD_CACHE_READS") == "1":
        record_cache_reads(out_dir)
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
