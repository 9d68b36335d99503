"""Fast training on a CPU, behind one boundary: nothing in ``paddle_chexnet.models`` imports this package.

* ``runtime``: math threads, MKL's code path on AMD processors, the heap (``configure_cpu``).
* ``kernels``: the C++ kernels' build and cache (``prepare_kernels``), ``csrc/cpu_kernels.cc``.
* ``ops``: the kernels as Paddle functions (fused BatchNorm + ReLU, convolutions, pooling, concat).
* ``fold``: the 3x3 convolution's fold path, in Paddle operators (the fallback without a compiler).
* ``layers``: the CPU-training layers and ``use_cpu_training_layers(net)``, the in-place swap the trainer makes.
"""
