"""Train CheXNet (DenseNet-121, 14 findings) on ChestX-ray14 with ``paddle.Model``.

Examples:
    python train.py --data-dir ChestX-ray14 --pretrained densenet121-a639ec97.pth
    python train.py --data-dir ChestX-ray14 --resume
    python -m paddle.distributed.launch --gpus 0,1,2,3 train.py --data-dir ChestX-ray14 --scale-lr
    python train.py --config configs/demo.json      # flags typed on the command line win over the file

All the logic is in paddle_chexnet.cli.train; `python train.py -h` lists every flag.
"""
import sys

from paddle_chexnet.cli.train import entry

if __name__ == "__main__":
    sys.exit(entry())
