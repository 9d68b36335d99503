"""The Gradio page: upload an X-ray, read its findings, look at a heatmap, download the result.

:func:`build_app` returns the ``gr.Blocks``; :func:`launch` serves it. The page
and the ``/predict`` API share one :class:`~paddle_chexnet.app.service.XrayService`
(one model in memory); the queue runs one job at a time and keeps the others
waiting. Whatever is wrong with an upload ends in a message on the page (or a
``gradio_client`` error with that message), never in a traceback.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from paddle_chexnet.app.service import (
    DISCLAIMER,
    Analysis,
    Heatmap,
    UploadError,
    XrayService,
    method_title,
    write_examples,
)

logger = logging.getLogger(__name__)

#: what Gradio itself accepts before our own checks (uploads above it never reach the model)
SERVER_MAX_FILE_SIZE = "200mb"

TITLE = "CheXNet: chest X-ray findings"

UNEXPECTED = "Something went wrong while analysing this file ({kind}); the server log has the details."


def _findings_table(service: XrayService, analysis: Analysis):
    import pandas as pd

    rows = []
    for f in analysis.findings:
        row = {"Finding": f.name, "Probability": f"{f.probability:.4f}"}
        if service.thresholds:
            row["Threshold"] = "" if f.threshold is None else f"{f.threshold:.4f}"
            row["Call"] = "" if f.positive is None else ("POSITIVE" if f.positive else "negative")
        rows.append(row)
    return pd.DataFrame(rows)


def _boxes_table(heatmap: Heatmap | None):
    import pandas as pd

    columns = ["x", "y", "w", "h", "score"]
    if heatmap is None:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame([[round(b.x, 1), round(b.y, 1), round(b.w, 1), round(b.h, 1), round(b.score, 4)]
                         for b in heatmap.boxes], columns=columns)


def _summary(service: XrayService, analysis: Analysis, heatmap: Heatmap | None) -> str:
    top = analysis.findings[0]
    lines = [f"**{analysis.name}** ({analysis.image.width}x{analysis.image.height} px): highest "
             f"**{top.name} {top.probability:.4f}**."]
    if service.thresholds:
        positive = [f.name for f in analysis.findings if f.positive]
        lines.append(f"Thresholds: {service.threshold_rule or 'given'} rule; "
                     + (f"positive: {', '.join(positive)}." if positive else "no finding at or above its threshold."))
    else:
        lines.append("This checkpoint has no thresholds: probabilities only, no positive calls.")
    if heatmap is not None:
        lines.append(f"Heatmap: {heatmap.finding} by {method_title(heatmap.method)}, {len(heatmap.boxes)} box(es) "
                     f"at {service.box_threshold:.0%} of the map's maximum.")
    return "  \n".join(lines)


def _error(message: str) -> str:
    return f"**Cannot use this file.** {message}"


def _write_results(service: XrayService, analysis: Analysis, heatmap: Heatmap | None, folder: Path) -> list[str]:
    out = Path(tempfile.mkdtemp(prefix="result-", dir=folder))
    stem = Path(analysis.name).stem or "xray"
    csv_path, json_path = out / f"{stem}_findings.csv", out / f"{stem}_findings.json"
    csv_path.write_text(service.result_csv(analysis), encoding="utf-8")
    json_path.write_text(service.result_json(analysis, heatmap), encoding="utf-8")
    return [str(csv_path), str(json_path)]


def build_app(weights: str | Path | None = None, service: XrayService | None = None, device: str = "auto",
              examples: int = 3, work_dir: str | Path | None = None):
    """The Gradio app for one model.

    Args:
        weights (str | Path, optional): a ``.pdparams`` of the project (read with
            :func:`~paddle_chexnet.models.loading.load_network`); or give ``service``.
        service (XrayService, optional): an already loaded model. Default: None.
        device (str, optional): ``'auto'`` (a GPU when Paddle sees one, else the CPU), ``'cpu'``, ``'gpu'``.
            Default: 'auto'.
        examples (int, optional): synthetic example X-rays to offer (made at start-up). Default: 3.
        work_dir (str | Path, optional): where examples and result files go. Default: None (a new temporary folder).

    Returns:
        gradio.Blocks: with ``.service`` (the model) and ``.work_dir`` attached.

    Examples:
        >>> demo = build_app("outputs/demo/best.pdparams")  # doctest: +SKIP
        >>> demo.queue(default_concurrency_limit=1).launch(server_port=7860)  # doctest: +SKIP
    """
    import gradio as gr

    if service is None:
        if weights is None:
            raise ValueError("build_app needs weights (a .pdparams file) or a service")
        service = XrayService.from_weights(weights, device)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="chexnet-app-"))
    work.mkdir(parents=True, exist_ok=True)
    example_paths = write_examples(work / "examples", examples) if examples else []
    results_dir = work / "results"
    results_dir.mkdir(exist_ok=True)
    methods = service.methods

    def analyse(path, method):
        """Upload -> state, summary, findings, finding choices, overlay, boxes, downloads."""
        nothing = (None, "", None, gr.update(choices=[], value=None), None, _boxes_table(None), None)
        if path is None:
            return nothing
        try:
            analysis = service.analyse(path)
            heatmap = service.heatmap(analysis, analysis.findings[0].name, method or "cam")
        except UploadError as exc:
            return (None, _error(str(exc)), *nothing[2:])
        except Exception as exc:  # the page must never show a traceback; the log keeps it
            logger.exception("analysing %s failed", path)
            return (None, _error(UNEXPECTED.format(kind=type(exc).__name__)), *nothing[2:])
        choices = [f.name for f in analysis.findings]
        return (analysis, _summary(service, analysis, heatmap), _findings_table(service, analysis),
                gr.update(choices=choices, value=heatmap.finding), heatmap.overlay, _boxes_table(heatmap),
                _write_results(service, analysis, heatmap, results_dir))

    def show(analysis, finding, method):
        """A finding or method picked -> summary, overlay, boxes, downloads."""
        if analysis is None or not finding:
            return gr.update(), gr.update(), gr.update(), gr.update()
        try:
            heatmap = service.heatmap(analysis, finding, method or "cam")
        except UploadError as exc:
            return _error(str(exc)), None, _boxes_table(None), gr.update()
        except Exception as exc:
            logger.exception("heatmap of %s for %s failed", finding, analysis.name)
            return _error(UNEXPECTED.format(kind=type(exc).__name__)), None, _boxes_table(None), gr.update()
        return (_summary(service, analysis, heatmap), heatmap.overlay, _boxes_table(heatmap),
                _write_results(service, analysis, heatmap, results_dir))

    def predict(image: str) -> dict[str, float]:
        """The API: an image file (PNG, JPEG or DICOM) in, ``{finding: probability}`` out."""
        try:
            return service.analyse(image).probability_map()
        except UploadError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            logger.exception("API prediction for %s failed", image)
            raise gr.Error(UNEXPECTED.format(kind=type(exc).__name__)) from None

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n**{DISCLAIMER}**", elem_id="disclaimer")
        gr.Markdown(f"Model: {service.describe()}.", elem_id="model-line")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Chest X-ray: PNG, JPEG or DICOM", file_count="single", type="filepath",
                                 elem_id="upload")
                method = gr.Radio([(method_title(m), m) for m in methods], value="cam", label="Heatmap method",
                                  elem_id="method")
                finding = gr.Dropdown(choices=[], value=None, label="Finding to show", interactive=True,
                                      elem_id="finding")
                if example_paths:
                    gr.Examples([[str(p)] for p in example_paths], inputs=[upload],
                                label="Synthetic examples (drawn by the package's generator, not real X-rays)")
                downloads = gr.File(label="Download the result (CSV, JSON)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload or drop an X-ray to see the findings.", elem_id="status")
                overlay = gr.Image(label="Heatmap and boxes", type="pil", format="jpeg", interactive=False,
                                   elem_id="overlay")
                table = gr.Dataframe(label="Findings, by probability", interactive=False, elem_id="findings")
                boxes = gr.Dataframe(_boxes_table(None), label="Boxes of the shown finding (original pixels)",
                                     interactive=False, elem_id="boxes")
        upload.change(analyse, [upload, method], [state, status, table, finding, overlay, boxes, downloads],
                      api_visibility="undocumented")
        finding.input(show, [state, finding, method], [status, overlay, boxes, downloads],
                      api_visibility="undocumented")
        method.input(show, [state, finding, method], [status, overlay, boxes, downloads],
                     api_visibility="undocumented")
        # the API: hidden components, so that gradio_client uploads the file and gets a JSON mapping back
        api_image = gr.File(visible=False, type="filepath")
        api_result = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)
        api_button.click(predict, [api_image], [api_result], api_name="predict",
                         api_description="An X-ray file (PNG, JPEG or DICOM) in, {finding: probability} out.")
    demo.service = service
    demo.work_dir = work
    return demo


def launch(demo, host: str = "127.0.0.1", port: int = 7860, block: bool = True, queue_size: int = 64):
    """Serve ``demo`` with a queue that runs one job at a time (``block=False`` returns at once)."""
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo.launch(server_name=host, server_port=port, max_file_size=SERVER_MAX_FILE_SIZE,
                       allowed_paths=[str(demo.work_dir)], ssr_mode=False, show_error=False,
                       prevent_thread_lock=not block, quiet=not block)
