"""Predictors: a float32 batch ``[B, 3, c, c]`` in, probabilities ``[B, C]`` out.

Two backends share one interface (:class:`Predictor`):

* :class:`DygraphPredictor` runs the network in Paddle's dynamic graph, on
  whatever device is set (the GPU when :func:`~paddle_chexnet.utils.device.select_device`
  picked it).
* :class:`InferencePredictor` runs a ``paddle.jit.save`` export of
  ``WithSigmoid(net)`` with Paddle Inference and oneDNN on the CPU: the graph
  is fused (conv+BN, conv+ReLU, ...) and runs several times faster than the
  dynamic graph on a CPU (BENCHMARKS.md), with the same probabilities (within 1e-5).
  Exports are cached (:mod:`paddle_chexnet.inference.export`).

Both take the network and its output names from the weights file through
:func:`~paddle_chexnet.models.loading.load_network`.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import paddle

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.inference.export import (
    MODEL_PREFIX,
    cached_export,
    export_model,
    model_file,
)
from paddle_chexnet.models.base import WithSigmoid
from paddle_chexnet.models.loading import load_network, network_spec
from paddle_chexnet.models.state_dict import read_state_dict
from paddle_chexnet.utils.system import usable_cores

logger = logging.getLogger(__name__)


DEFAULT_CPU_MICRO_BATCH = 10


class Predictor(ABC):
    """Probabilities for a batch of preprocessed images.

    A batch is run in slices of at most :attr:`micro_batch` images: on a CPU,
    DenseNet's activations for about 10 images at 224x224 stay in the caches,
    while a batch of 80 crops spills to memory and runs slower per image.
    ``None`` runs the whole batch at once (best on a GPU).

    Attributes:
        class_names (tuple[str, ...]): one name per output column.
        micro_batch (int | None): images per network call.
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    backend: str = ""
    micro_batch: int | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` float32 ``[B, 3, c, c]`` -> probabilities float32 ``[B, C]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.micro_batch or len(batch)
        if len(batch) <= step:
            return self._run(batch)
        return np.concatenate([self._run(batch[i:i + step]) for i in range(0, len(batch), step)])

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One network call on a contiguous float32 batch."""


class DygraphPredictor(Predictor):
    """The network in Paddle's dynamic graph, in eval mode, on the current device.

    Args:
        net (paddle.nn.Layer): a network returning logits (e.g. :func:`~paddle_chexnet.models.densenet.chexnet`).

    Examples:
        >>> from paddle_chexnet import chexnet
        >>> predict = DygraphPredictor(chexnet())
        >>> predict(np.zeros((2, 3, 224, 224), np.float32)).shape
        (2, 14)
    """

    backend = "dygraph"

    def __init__(self, net: paddle.nn.Layer, micro_batch: int | None = None) -> None:
        self.micro_batch = micro_batch
        net.eval()
        self.model = WithSigmoid(net)
        self.model.eval()
        self.class_names = tuple(getattr(net, "class_names", CLASS_NAMES))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return self.model(paddle.to_tensor(batch)).numpy()


class InferencePredictor(Predictor):
    """An exported model run by Paddle Inference with oneDNN on the CPU.

    Args:
        prefix (str | Path): export prefix (``prefix.json``/``.pdmodel`` + ``prefix.pdiparams``).
        num_threads (int, optional): math threads; ``None`` uses every core this process may use. Default: None.
        use_onednn (bool, optional): oneDNN kernels (the fast path). Default: True.
        class_names (Sequence[str], optional): names of the outputs. Default: CLASS_NAMES.
        micro_batch (int, optional): images per network call, see :class:`Predictor`.
            Default: 10 (one image's ten crops).

    Examples:
        >>> predict = InferencePredictor.from_weights("pretrained_models/chexnet.pdparams")  # doctest: +SKIP
        >>> predict(batch).shape  # doctest: +SKIP
        (80, 14)
    """

    backend = "inference"

    def __init__(
        self,
        prefix: str | Path,
        num_threads: int | None = None,
        use_onednn: bool = True,
        class_names: Sequence[str] = CLASS_NAMES,
        micro_batch: int | None = DEFAULT_CPU_MICRO_BATCH,
    ) -> None:
        from paddle import inference

        self.micro_batch = micro_batch

        graph = model_file(prefix)
        config = inference.Config(str(graph), f"{prefix}.pdiparams")
        config.disable_gpu()
        if use_onednn:
            # Paddle 3 renamed enable_mkldnn to enable_onednn; accept both.
            (getattr(config, "enable_onednn", None) or config.enable_mkldnn)()
        self.num_threads = num_threads or usable_cores()
        config.set_cpu_math_library_num_threads(self.num_threads)
        config.switch_ir_optim(True)
        # enable_memory_optim() fails on Paddle 3.3's PIR graphs (memory_optimize_pass not found).
        config.disable_glog_info()
        self._predictor = inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])
        self.prefix = Path(prefix)
        self.class_names = tuple(class_names)

    @classmethod
    def from_network(
        cls, net: paddle.nn.Layer, export_dir: str | Path, crop: int = 224, **kwargs
    ) -> InferencePredictor:
        """Export ``net`` to ``export_dir`` (no caching) and load it."""
        prefix = Path(export_dir) / MODEL_PREFIX
        export_model(net, prefix, crop)
        kwargs.setdefault("class_names", getattr(net, "class_names", CLASS_NAMES))
        return cls(prefix, **kwargs)

    @classmethod
    def from_weights(
        cls, weights: str | Path, crop: int = 224, cache_dir: str | Path | None = None, **kwargs
    ) -> InferencePredictor:
        """Load the cached export of ``weights`` (see :func:`cached_export`), exporting it on first use.

        The weights are read and checked every time (existence, finite values, their spec), so an
        export cached earlier is never used for a file that would not load.
        """
        spec = network_spec(weights, read_state_dict(weights))
        kwargs.setdefault("class_names", spec.class_names)
        return cls(cached_export(weights, crop, cache_dir), **kwargs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self._predictor.run()
        return self._output.copy_to_cpu()


def load_predictor(
    weights: str | Path,
    backend: str = "auto",
    device: str = "cpu",
    crop: int = 224,
    cache_dir: str | Path | None = None,
    num_threads: int | None = None,
    micro_batch: int | None = None,
) -> Predictor:
    """A predictor for a CheXNet weights file.

    Args:
        weights (str | Path): ``.pdparams`` of a CheXNet.
        backend (str, optional): ``'inference'`` (Paddle Inference + oneDNN, CPU),
            ``'dygraph'``, or ``'auto'``: inference on the CPU, dygraph on a GPU. Default: 'auto'.
        device (str, optional): the device already chosen with ``select_device``. Default: 'cpu'.
        crop (int, optional): input size (part of the export's cache key). Default: 224.
        cache_dir (str | Path, optional): export cache, see :func:`cached_export`. Default: None.
        num_threads (int, optional): CPU threads for Paddle Inference. Default: None (all cores).
        micro_batch (int, optional): images per network call (see :class:`Predictor`); 0 runs
            each batch whole. Default: None (10 on the CPU, whole batches on a GPU).

    Raises:
        FileNotFoundError: ``weights`` does not exist; the message says how to get them.
        ValueError: an unknown backend, or ``'inference'`` with a GPU device.
    """
    if backend not in ("auto", "inference", "dygraph"):
        raise ValueError(f"unknown backend {backend!r}; use auto, inference or dygraph")
    on_gpu = device.startswith("gpu")
    if backend == "auto":
        backend = "dygraph" if on_gpu else "inference"
    if micro_batch is None:
        micro_batch = None if on_gpu else DEFAULT_CPU_MICRO_BATCH
    micro_batch = micro_batch or None  # 0: whole batches
    if backend == "inference":
        if on_gpu:
            raise ValueError("the Paddle Inference backend here runs on the CPU; use --backend dygraph on a GPU")
        return InferencePredictor.from_weights(
            weights, crop=crop, cache_dir=cache_dir, num_threads=num_threads, micro_batch=micro_batch
        )
    return DygraphPredictor(load_network(weights), micro_batch=micro_batch)
