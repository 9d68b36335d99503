"""paddle-chexnet: CheXNet (Rajpurkar et al. 2017) in PaddlePaddle.

Importing the package sets no device, reads no file and downloads nothing. Its
one side effect is on AMD processors: it sets ``MKL_DEBUG_CPU_TYPE`` (``7`` where
the processor has AVX-512, ``5`` where it has AVX2) unless the user set it, so
that the MKL bundled with Paddle runs its fast code (a 3.4x faster training
step here than with MKL's default path, BENCHMARKS.md) in this process and the processes it starts,
whichever of them makes the first matrix product (see
:mod:`paddle_chexnet.cpu_runtime`).
"""
from paddle_chexnet.cpu.runtime import use_fast_mkl_on_amd

use_fast_mkl_on_amd()

from paddle_chexnet.data.labels import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from paddle_chexnet.models.densenet import DenseNet, WithSigmoid, chexnet, densenet121  # noqa: E402

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "DenseNet", "WithSigmoid", "chexnet", "densenet121"]
__version__ = "0.1.0"
