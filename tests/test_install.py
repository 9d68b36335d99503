"""The documented install never puts a Paddle wheel over an installed one (pip's dry run, offline).

Each test makes a fresh virtual environment, installs stand-ins of what a machine already
has (a ``paddlepaddle-gpu`` and an ``opencv-python``, as in AI Studio) and asks pip what the
documented command would install, with ``--dry-run --report``.
Every package comes from a local folder of tiny wheels the test builds (stand-ins named
like the runtime requirements, a ``paddlepaddle==3.3.1`` the resolver could pick, and the
setuptools this interpreter runs, repacked as the build backend): no network.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

packaging_requirements = pytest.importorskip("packaging.requirements")
packaging_version = pytest.importorskip("packaging.version")

REQUIREMENT_FILES = ("requirements.txt", "requirements-cpu.txt", "requirements-dev.txt", "requirements-app.txt",
                     "requirements-export.txt")
PADDLE_WHEELS = {"paddlepaddle", "paddlepaddle-gpu"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def write_wheel(folder: Path, name: str, version: str, files: dict[str, bytes] | None = None) -> Path:
    """A pure-Python wheel ``name==version`` holding ``files`` (path -> bytes) and no dependencies."""
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"
    info = f"{stem}.dist-info"
    contents = dict(files or {})
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests/test_install.py\nRoot-Is-Purelib: true\n" \
                                b"Tag: py3-none-any\n"
    return _zip_wheel(folder / f"{stem}-py3-none-any.whl", contents, info)


def _zip_wheel(path: Path, contents: dict[str, bytes], info: str) -> Path:
    record = [_record_line(name, data) for name, data in contents.items()] + [f"{info}/RECORD,,"]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in contents.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def repack_installed(name: str, folder: Path) -> Path:
    """The installed distribution ``name`` (pure Python, e.g. setuptools) packed again as a wheel."""
    dist = importlib.metadata.distribution(name)
    info = None
    contents = {}
    for file in dist.files or []:
        parts = Path(str(file)).parts
        if parts[0] == ".." or "__pycache__" in parts or file.name in ("RECORD", "INSTALLER", "REQUESTED",
                                                                     "direct_url.json"):
            continue
        if parts[0].endswith(".dist-info"):
            info = parts[0]
        contents[str(file)] = Path(dist.locate_file(file)).read_bytes()
    assert info is not None, f"{name} has no .dist-info"
    return _zip_wheel(folder / f"{info[:-len('.dist-info')]}-py3-none-any.whl", contents, info)


def stand_in_version(requirement) -> str:
    """A version satisfying ``requirement``'s specifier: its ``==`` or lower bound, else 1.0."""
    for spec in requirement.specifier:
        if spec.operator in ("==", ">=", "~=", "==="):
            return spec.version
    return "1.0"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """Stand-ins for every requirement of the project's files, real setuptools, and the Paddle/OpenCV wheels."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    setuptools = importlib.metadata.version("setuptools")
    if packaging_version.Version(setuptools) < packaging_version.Version("77"):
        pytest.skip(f"setuptools {setuptools} is older than the build backend needs (>=77, the dev extra's)")
    repack_installed("setuptools", folder)
    versions: dict[str, str] = {}  # one stand-in per name, satisfying every file that names it
    for filename in REQUIREMENT_FILES:
        for line in (REPO_ROOT / filename).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            requirement = packaging_requirements.Requirement(line)
            name = _normalise(requirement.name)
            if name == "setuptools":
                continue
            version = stand_in_version(requirement)
            if name not in versions or packaging_version.Version(version) > packaging_version.Version(versions[name]):
                versions[name] = version
    for name, version in versions.items():
        write_wheel(folder, name, version)
    for name, version in [("paddlepaddle-gpu", "3.0.0"), ("opencv-python", "4.10.0.84")]:
        package = "cv2" if name.startswith("opencv") else "paddle"
        write_wheel(folder, name, version,
                    {f"{package}/__init__.py": f"__version__ = {version!r}  # {name} stand-in\n".encode()})
    return folder


def pip_environment() -> dict[str, str]:
    """This machine's environment without pip's settings: no configured index, constraints or find-links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    """This interpreter's pip, run for the virtual environment ``venv`` (``pip --python``)."""
    command = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args]
    out = subprocess.run(command, capture_output=True, text=True, env=pip_environment(), cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, f"{' '.join(command)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def fresh_venv(path: Path, wheelhouse: Path, *already_installed: str) -> Path:
    """A new virtual environment holding ``already_installed`` (and setuptools, the build backend)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    pip(path, "install", "--no-index", "--find-links", str(wheelhouse), "setuptools", *already_installed)
    return path


def dry_run(venv: Path, wheelhouse: Path, *targets: str) -> dict[str, str]:
    """What ``pip install TARGETS`` would install in ``venv``: ``{name: version}`` from pip's report.

    The project's metadata is built with the environment's setuptools (``--no-build-isolation``):
    what pip resolves from it is the same, and no build environment is made for each run.
    """
    report = venv / "report.json"
    pip(venv, "install", "--dry-run", "--quiet", "--report", str(report), "--no-index", "--find-links",
        str(wheelhouse), "--no-build-isolation", *targets)
    items = json.loads(report.read_text())["install"]
    return {_normalise(item["metadata"]["name"]): item["metadata"]["version"] for item in items}


@pytest.fixture(scope="module")
def gpu_venv(tmp_path_factory, wheelhouse) -> Path:
    """A machine like AI Studio's: paddlepaddle-gpu and opencv-python already installed."""
    return fresh_venv(tmp_path_factory.mktemp("gpu") / "venv", wheelhouse, "paddlepaddle-gpu==3.0.0",
                      "opencv-python==4.10.0.84")


@pytest.mark.parametrize("extras", ["", "[dev]"])  # pip install -e .   /   pip install -e ".[dev]"
def test_the_gpu_machine_command_installs_no_paddle_wheel(gpu_venv, wheelhouse, extras) -> None:
    planned = dry_run(gpu_venv, wheelhouse, "-e", f"{REPO_ROOT}{extras}")
    assert planned.pop("paddle-chexnet") == __import__("paddle_chexnet").__version__
    assert not PADDLE_WHEELS & set(planned), planned
    assert "opencv-python-headless" not in planned, "a second OpenCV wheel would overwrite cv2"
    assert {"numpy", "pandas", "scikit-learn"} <= set(planned)
    assert ({"torch", "torchvision", "pytest"} <= set(planned)) == (extras == "[dev]")


def test_the_same_offline_setup_would_install_a_paddle_if_one_were_required(gpu_venv, wheelhouse) -> None:
    """The check above can fail: asked for the CPU wheel, this resolver would install it beside the GPU one."""
    assert dry_run(gpu_venv, wheelhouse, "paddlepaddle==3.3.1") == {"paddlepaddle": "3.3.1"}


def test_the_fresh_cpu_machine_command_installs_the_pinned_cpu_paddle(tmp_path, wheelhouse) -> None:
    venv = fresh_venv(tmp_path / "venv", wheelhouse)
    planned = dry_run(venv, wheelhouse, "-e", f"{REPO_ROOT}[cpu,dev]")
    assert planned.get("paddlepaddle") == "3.3.1"
    assert "paddlepaddle-gpu" not in planned
    assert {"opencv-python-headless", "torch", "pytest", "pandas"} <= set(planned)


def _bash_block(markdown: str, heading: str) -> list[str]:
    """The command lines (comments dropped) of the first bash block after ``heading``."""
    section = markdown[markdown.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_installs_with_the_documented_fresh_machine_commands() -> None:
    documented = _bash_block((REPO_ROOT / "docs" / "install.md").read_text(), "## A fresh CPU machine")
    assert documented == ["python -m venv .venv && . .venv/bin/activate", 'pip install -e ".[cpu,dev]"']
    ci = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci if line in documented] == documented
    gpu = _bash_block((REPO_ROOT / "docs" / "install.md").read_text(), "## A GPU machine")
    assert gpu[0] == "pip install -e ."
