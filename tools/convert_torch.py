"""Convert a DenseNet-121 / CheXNet checkpoint to this package's ``.pdparams``, and optionally verify it.

Reads arnoweng/CheXNet's ``model.pth.tar``, jrzech/reproduce-chexnet's ``checkpoint``
(with --trust-pickle), torchvision DenseNet-121 state dicts (e.g. the ImageNet
weights), and ``paddle.vision`` DenseNet-121 ``.pdparams`` (Paddle's ImageNet
weights, jm12138/Paddle-CheXNet). The layout is detected from the keys.

Examples:
    python tools/convert_torch.py model.pth.tar                       # -> pretrained_models/model.pdparams
    python tools/convert_torch.py model.pth.tar --verify \\
        --images ChestX-ray14/images --labels ChestX-ray14/labels/test_list.txt --limit 200
    python tools/convert_torch.py checkpoint --trust-pickle -o pretrained_models/jrzech.pdparams
    python tools/convert_torch.py densenet121-a639ec97.pth --head drop  # ImageNet backbone for training
"""
import sys

from paddle_chexnet.cli.convert_torch import entry

if __name__ == "__main__":
    sys.exit(entry())
