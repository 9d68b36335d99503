#!/usr/bin/env bash
# The core subset of the tests (pyproject.toml, [tool.paddle-chexnet] paddle-version-tests) on the
# oldest supported PaddlePaddle (paddle-oldest), in a second virtual environment, installed the way
# docs/install.md says for a machine that already has a Paddle: the Paddle wheel first, then
# `pip install -e .` (no torch: the tests that need it skip). Usage: .ci/oldest_paddle.sh [JUNIT_XML]
set -euo pipefail
cd "$(dirname "$0")/.."
read_setting() {
    python3 -c "import sys, tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['paddle-chexnet'][sys.argv[1]])" "$1"
}
version=$(read_setting paddle-oldest | tr -d ' ')
tests=$(read_setting paddle-version-tests)
venv=".venv-paddle-$version"
start=$(date +%s)
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "paddlepaddle==$version"
"$venv/bin/python" -m pip install --quiet -e . pytest
echo "second venv: paddlepaddle $version installed in $(( $(date +%s) - start )) s"
# shellcheck disable=SC2086
"$venv/bin/python" -m pytest $tests --durations=5 ${1:+--junitxml="$1"}
