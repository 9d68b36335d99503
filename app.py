"""A web app for a CheXNet model (Gradio): upload a PNG, JPEG or DICOM chest X-ray, see every finding's
probability, thresholds and calls, heatmaps (CAM, Grad-CAM, Grad-CAM++) with boxes; download CSV/JSON.

Examples:
    pip install -r requirements-app.txt
    python app.py --weights outputs/demo/best.pdparams                 # http://127.0.0.1:7860
    python app.py --weights W.pdparams --host 0.0.0.0 --port 8080

Research use only, not a medical device. docs/app.md describes the page and the /predict API.
"""
import sys

from paddle_chexnet.cli.app import entry

if __name__ == "__main__":
    sys.exit(entry())
