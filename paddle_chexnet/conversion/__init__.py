"""Foreign weights: PyTorch (and ``paddle.vision``) checkpoints into this package's layout, strictly.

* ``readers``: reading ``.pth`` / ``.pth.tar`` / ``.pdparams`` files safely (``read_checkpoint``).
* ``layouts``: recognising a layout from its keys and renaming it (``detect_format``, ``convert_state_dict``).
* ``verify``: ``tools/convert_torch.py --verify``, the comparison with torchvision's own network.
* ``pretrained``: ImageNet weights for a backbone (``load_pretrained``), ``--pretrained imagenet``.
"""
