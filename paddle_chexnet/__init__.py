"""paddle-chexnet: CheXNet (Rajpurkar et al. 2017) in PaddlePaddle.

Importing the package has no side effects: it sets no device, reads no file
and downloads nothing.
"""
from .densenet import DenseNet, WithSigmoid, chexnet, densenet121
from .labels import CLASS_NAMES, NUM_CLASSES

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "DenseNet", "WithSigmoid", "chexnet", "densenet121"]
__version__ = "0.1.0"
