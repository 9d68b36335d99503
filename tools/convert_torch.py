"""Convert a DenseNet-121 / CheXNet checkpoint to this package's ``.pdparams``, and optionally verify it.

`python tools/convert_torch.py -h` lists the flags; the logic is in paddle_chexnet.cli.convert_torch.
"""
import sys

from paddle_chexnet.cli.convert_torch import entry

if __name__ == "__main__":
    sys.exit(entry())
