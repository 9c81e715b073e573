#!/usr/bin/env bash
# The real peers of the tests: the programs minimind's output is checked against. Without them
# those tests skip and say why; everything else runs after `pip install -e ".[dev]"`.
#
#   llama-cpp-python  tests/test_export_gguf.py runs the exported GGUF files in llama.cpp. PyPI
#                     has no Linux wheel: pip COMPILES llama.cpp from source, about 4 minutes on
#                     a quiet machine and 30 on a busy 2-core one. The wheel is built once per
#                     version and CPU and kept in ~/.cache/minimind-ci (outside the checkout).
#   playwright        tests/test_serve_web.py drives the web chat page in the system's Chromium
#   + Chromium        (playwright's own browser download needs the internet).
#   Go                tests/test_export_ollama.py renders the Ollama template with Go's
#                     text/template.
#
# Go and Chromium come from apt when this runs as root; otherwise install golang-go and chromium
# yourself (the script says so). Run it from anywhere, in the environment minimind is installed in.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
WHEELS="$HOME/.cache/minimind-ci/llama-cpp-python-$LLAMA_CPP_VERSION-$(grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-8)"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_CPP_VERSION (compiles llama.cpp: 4 to 30 minutes)..."
    python -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
python -m pip install --quiet --find-links "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION" "playwright>=1.40"

apt_install() {  # apt_install COMMAND PACKAGE WHAT
    if command -v "$1" >/dev/null; then
        return
    fi
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        echo "no $1 on PATH: install $2 (e.g. sudo apt-get install $2); until then $3 skips"
    fi
}
apt_install go golang-go tests/test_export_ollama.py
apt_install chromium chromium tests/test_serve_web.py
