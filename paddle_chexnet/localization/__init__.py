"""Where the model looks: heatmaps, boxes, overlays, and their scoring against expert boxes.

* ``cam``: CAM, Grad-CAM and Grad-CAM++ of any finding, in batches (``compute_heatmaps``).
* ``boxes``: boxes from heatmaps, IoU / IoBB, NIH's ``BBox_List_2017.csv``, Wang et al.'s accuracy table.
* ``overlays``: heatmap pictures with boxes and labels.
* ``predict``: ``tools/predict.py``'s work on image files (``predict``, ``iter_heatmaps``, ``read_thresholds``).
* ``protocol``: ``tools/localize_eval.py``'s work (``localize_known_findings``).
"""
