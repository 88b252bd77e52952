"""scripts/gradcache_hook_ddp.py: the evidence for keeping GradCache as a step of its own. If
torch's DDP ever all-reduces every chunk of a loss hook, this fails and GradCache may move into
the loss."""

import json
import sys
from pathlib import Path

from tests.conftest import run_python, user_env

ROOT = Path(__file__).resolve().parents[2]


def test_a_loss_hook_loses_later_chunks_gradients_under_ddp() -> None:
    done = run_python([sys.executable, "scripts/gradcache_hook_ddp.py", "--chunks", "4"], ROOT,
                      user_env(), 300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["plain DDP step vs the mean of the ranks' gradients"] < 1e-5  # DDP did reduce
    assert all(diff < 1e-5 for diff in result["one process"].values()), result
    ddp = result["ddp"]
    assert ddp["hook, 1 chunk"] < 1e-5
    assert ddp["hook, 4 chunks"] > 1e-2, ddp  # the later chunks stayed local to each rank
    assert ddp["hook, 4 chunks, p.grad seeded"] < 1e-5
