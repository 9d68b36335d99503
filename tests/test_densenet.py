from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddle_chexnet import CLASS_NAMES, DenseNet, WithSigmoid, chexnet
from paddle_chexnet.models.state_dict import StateDictMismatchError, load_weights


def _tiny(num_classes: int = 14) -> DenseNet:
    return DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=num_classes)


def test_chexnet_names_mirror_torchvision():
    keys = chexnet().state_dict().keys()
    assert "features.conv0.weight" in keys
    assert "features.denseblock1.denselayer1.norm1._mean" in keys
    assert "features.denseblock4.denselayer16.conv2.weight" in keys
    assert "features.transition3.conv.weight" in keys
    assert "features.norm5._variance" in keys
    assert len(keys) == 606  # torchvision densenet121: 727 entries less 121 num_batches_tracked


def test_class_names_default_and_mismatch():
    assert chexnet().class_names == CLASS_NAMES
    assert chexnet().targets == CLASS_NAMES
    with pytest.raises(ValueError, match="one name per output"):
        DenseNet(num_classes=3, class_names=["a", "b"])


@pytest.mark.parametrize("size", [32, 64])
def test_output_is_logits_and_sigmoid_wrapper_gives_probabilities(size):
    paddle.seed(0)
    net = _tiny()
    net.eval()
    x = paddle.randn([2, 3, size, size])
    logits = net(x)
    assert logits.shape == [2, 14]
    np.testing.assert_allclose(WithSigmoid(net)(x).numpy(), 1 / (1 + np.exp(-logits.numpy())), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.predict_proba(x).numpy(), WithSigmoid(net)(x).numpy(), atol=0)


def test_batchnorm_matches_torch_conventions():
    bn = chexnet().features.norm0
    assert bn._momentum == pytest.approx(0.9)  # torch momentum 0.1
    assert bn._epsilon == pytest.approx(1e-5)


def test_load_weights_refuses_mismatched_file(tmp_path):
    net = _tiny()
    path = tmp_path / "w.pdparams"
    paddle.save(_tiny(num_classes=5).state_dict(), str(path))
    with pytest.raises(StateDictMismatchError, match=r"classifier.weight: expected \[14, 14\], got \[14, 5\]"):
        load_weights(net, path)
    state = net.state_dict()
    del state["features.norm0.weight"]
    paddle.save(state, str(path))
    with pytest.raises(StateDictMismatchError, match="missing keys:\n    features.norm0.weight"):
        load_weights(net, path)
    with pytest.raises(FileNotFoundError, match="convert_torch.py"):
        load_weights(net, tmp_path / "absent.pdparams")


def test_load_weights_round_trip(tmp_path):
    paddle.seed(1)
    src = _tiny()
    path = tmp_path / "w.pdparams"
    paddle.save(src.state_dict(), str(path))
    dst = _tiny()
    load_weights(dst, path)
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key].numpy(), value.numpy())
