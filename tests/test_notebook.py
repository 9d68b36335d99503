"""notebooks/quickstart.ipynb: committed without outputs, every command's flags exist, and it runs top to bottom.

The run (slow) executes a copy of the repository's files with nbclient on the CPU, with the
demo cut to one epoch (``CHEXNET_QUICKSTART_EPOCHS=1``) and without the cells tagged
``skip-ci`` (the real ChestX-ray14's, which need NIH's images).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"
SKIP_TAG = "skip-ci"
# what the notebook's variables stand for when its commands are checked without running them
PLACEHOLDERS = {"PY": "python", "ROOT": Path("/repo"), "NIH": Path("/data/ChestX-ray14"), "EPOCHS": "1",
                "CHECKPOINT": Path("/repo/pretrained_models/model.pth.tar"), "IMAGE": Path("demo/images/x.png"),
                "check": "print()", "shlex": shlex, "int": int, "Path": Path}


def _notebook():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def _code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _commands(source: str) -> list[str]:
    """The command of every ``run(...)`` call in a cell, its f-strings filled from :data:`PLACEHOLDERS`.

    String assignments and ``+=`` before a call are evaluated in order, so ``run(command)`` works.
    """
    namespace = dict(PLACEHOLDERS)
    found = []
    nodes = [node for node in ast.walk(ast.parse(source))
             if isinstance(node, (ast.Assign, ast.AugAssign)) or
             (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run")]
    for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Call):
            found.append(eval(compile(ast.Expression(node.args[0]), "<cell>", "eval"), namespace))
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                namespace[node.targets[0].id] = eval(compile(ast.Expression(node.value), "<cell>", "eval"), namespace)
            except Exception:  # not a value this check needs (a file read, an import)
                continue
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id in namespace:
            namespace[node.target.id] += eval(compile(ast.Expression(node.value), "<cell>", "eval"), namespace)
    return found


def _cli_module(script: str):
    name = {"train.py": "train", "eval.py": "evaluate"}.get(script) or script.removeprefix("tools/")[:-3]
    return importlib.import_module(f"paddle_chexnet.cli.{name}")


def test_the_committed_notebook_has_no_outputs() -> None:
    cells = _code_cells(_notebook())
    assert cells
    for cell in cells:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_the_install_cell_leaves_an_installed_paddle_alone() -> None:
    """``pip install -e ".[cpu]"`` only where ``import paddle`` failed, else ``pip install -e .``."""
    (source,) = [cell.source for cell in _code_cells(_notebook()) if "pip install" in cell.source]
    tree = ast.parse(source)
    (branches,) = [node for node in tree.body if isinstance(node, ast.If)]
    assert ast.unparse(branches.test) == "installed"  # nothing at all when the package is there
    gpu_or_any_paddle, no_paddle = branches.orelse[0].body, branches.orelse[0].orelse
    assert ast.unparse(branches.orelse[0].test) == "paddle is not None"
    for body, expected in [(gpu_or_any_paddle, "."), (no_paddle, ".[cpu]")]:
        commands = _commands(ast.unparse(ast.Module(body=body, type_ignores=[])))
        assert [shlex.split(c)[1:] for c in commands] == [["-m", "pip", "install", "-e", expected]]


def test_every_command_of_the_notebook_parses_with_its_script() -> None:
    """The flags of every command, skip-ci cells included, exist in the scripts' parsers."""
    checked = []
    for cell in _code_cells(_notebook()):
        for command in _commands(cell.source):
            words = shlex.split(command)
            assert words[0] == "python", command
            if words[1] in ("-m", "-c"):
                continue
            assert (REPO_ROOT / words[1]).is_file(), command
            _cli_module(words[1]).get_args_parser().parse_args(words[2:])
            checked.append(words[1])
    assert {"tools/make_synthetic.py", "train.py", "eval.py", "tools/predict.py", "tools/convert_torch.py",
            "tools/make_label_lists.py"} <= set(checked)


def test_the_ai_studio_page_commands_parse_with_their_scripts() -> None:
    """docs/ai-studio.md's ``!python ...`` lines: every flag exists."""
    text = (REPO_ROOT / "docs" / "ai-studio.md").read_text().replace("\\\n", " ")
    commands = [line[1:].strip() for line in text.splitlines() if line.startswith("!python ")]
    for command in commands:
        words = shlex.split(command)
        if words[1] == "benchmarks/gpu_check.py":
            spec = importlib.util.spec_from_file_location("gpu_check_doc", REPO_ROOT / words[1])
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(spec.name, module)
            spec.loader.exec_module(module)
            module.get_args_parser().parse_args(words[2:])
        else:
            _cli_module(words[1]).get_args_parser().parse_args(words[2:])
    assert {shlex.split(c)[1] for c in commands} == {"benchmarks/gpu_check.py", "tools/make_label_lists.py",
                                                      "train.py", "eval.py"}


def test_the_real_data_cells_are_tagged_to_be_skipped() -> None:
    for cell in _code_cells(_notebook()):
        skipped = SKIP_TAG in cell.metadata.get("tags", [])
        assert skipped == any(name in cell.source for name in ("NIH", "CHECKPOINT")), cell.source[:80]


def _copy_repository(target: Path) -> Path:
    """The repository's files without environments, data or run outputs (the notebook writes beside them)."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", ".pytest_cache", "demo",
                                    "outputs", "logs", "ChestX-ray14", "pretrained_models")
    shutil.copytree(REPO_ROOT, target, ignore=ignore)
    return target


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_the_cpu(tmp_path, monkeypatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    repo = _copy_repository(tmp_path / "repo")
    notebook = _notebook()
    notebook.cells = [cell for cell in notebook.cells if SKIP_TAG not in cell.metadata.get("tags", [])]
    # the kernel (and the commands it starts) inherit this environment: the copy's package, one epoch
    monkeypatch.setenv("CHEXNET_QUICKSTART_EPOCHS", "1")
    monkeypatch.setenv("PYTHONPATH", str(repo))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU, as in CI, even on a machine with a GPU
    notebook.cells.insert(0, nbformat.v4.new_code_cell(f"import sys; assert sys.executable == {sys.executable!r}"))
    client = nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo / "notebooks")}})
    client.execute()

    outputs = {cell.source: cell.outputs for cell in notebook.cells if cell.cell_type == "code"}

    def shown(fragment: str, kind: str) -> list:
        (cell_outputs,) = [value for source, value in outputs.items() if fragment in source]
        return [out for out in cell_outputs if kind in out.get("data", {}) or kind == out.get("name")]

    assert "paddle-chexnet" in "".join(o["text"] for o in shown("pip install", "stdout"))
    assert len(shown("roc_curves.png", "image/png")) == 1
    assert len(shown("tools/predict.py", "image/png")) >= 1
    epochs = (repo / "logs" / "demo" / "history.csv").read_text().strip().splitlines()[1:]
    assert len(epochs) == 1
    metrics = json.loads((repo / "outputs" / "demo-eval" / "metrics.json").read_text())
    test_images = (repo / "demo" / "ChestX-ray14-synthetic" / "labels" / "test_list.txt").read_text().splitlines()
    assert metrics["images"] == len(test_images)
