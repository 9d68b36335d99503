"""Data: what the findings are called, where the images and labels come from, and how an image becomes a tensor.

* ``labels``: the 14 ChestX-ray14 findings in CheXNet order (``CLASS_NAMES``), NIH spellings.
* ``tasks``: the tasks (``chexnet14``, ``nih8``, ``abnormal``, ``chexpert5``, ``chexpert14``) and their classes.
* ``label_lists``: CheXNet label lists (``read_label_list``, ``write_label_list``).
* ``nih``: NIH's ``Data_Entry_2017`` CSV, official split lists, the patient-level split.
* ``chexpert``: CheXpert's CSVs, uncertainty policies, views, its dataset.
* ``images``, ``dicom``: reading any X-ray file (``read_xray``, ``list_images``).
* ``datasets``: image folders and ``ChestXray14Dataset``.
* ``transforms``: torchvision-identical preprocessing (``EvalTransform``, ``TrainTransform``).
* ``sampling``: seeded batch order and augmentation (exact resume).
* ``synthetic``, ``synthetic_chexpert``: the seeded synthetic data sets of the demo and the tests.
"""
