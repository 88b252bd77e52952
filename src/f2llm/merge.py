"""Merge the last N checkpoints of a run into one exported model (weights only).

    python src/f2llm/merge.py run=logs/train/runs/<time> last=3 method=soup|slerp [out=<folder>]

Writes a sentence-transformers folder (`f2llm.export`) with the run's prompts, plus
`merge.json` naming the merged checkpoints. Only the encoder's weights are read from each
checkpoint (`torch.load(weights_only=True)`); optimiser and scheduler states are ignored.
The public F2LLM code keeps step checkpoints near the end of training "for ckpt merging"
(F2LLM/utils.py); Qwen3-Embedding (arXiv:2506.05176) merges checkpoints by slerp.
"""

from __future__ import annotations

from f2llm.bootstrap import (  # first: sys.path and the project root
    CONFIG_DIR,
    exit_without_final_collection,
)

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

# The model code (transformers) is imported by the functions that build and export the model:
# `--help`, `--cfg job` and a mistake Hydra finds in the command line are answered without it.

log = logging.getLogger("f2llm.merge")
State = Mapping[str, Tensor]
# |cos| above this: the two tensors are treated as colinear and interpolated linearly (the
# slerp weights' sin(theta) denominator vanishes). The value mergekit's slerp uses
# (mergekit/merge_methods/slerp.py, DOT_THRESHOLD).
COLINEAR = 0.9995


def soup(states: Sequence[State]) -> dict[str, Tensor]:
    """Model soup: the uniform mean of each floating-point tensor (accumulated in float64, in
    the given order, so the same inputs give bitwise the same result)."""
    return _merge(states, _mean)


def _mean(tensors: Sequence[Tensor], key: str) -> Tensor:
    total = torch.zeros_like(tensors[0], dtype=torch.float64)
    for t in tensors:
        total += t.double()
    return total / len(tensors)


def colinear(a: Tensor, b: Tensor) -> bool:
    """|cos(a, b)| > COLINEAR as flattened vectors; a zero tensor is colinear with anything."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    norms = a64.norm() * b64.norm()
    return bool(norms == 0 or (a64 @ b64 / norms).abs() > COLINEAR)


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation of one tensor, flattened to a vector: the angle theta between a
    and b is split t : 1 - t, the norms interpolate with the same weights
    (sin((1-t)theta) a + sin(t theta) b) / sin(theta). Colinear tensors (`colinear`)
    interpolate linearly. Computed in float64; t=0 gives a, t=1 gives b."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    if colinear(a64, b64):
        out = (1 - t) * a64 + t * b64
    else:
        theta = torch.arccos((a64 @ b64 / (a64.norm() * b64.norm())).clamp(-1.0, 1.0))
        out = (torch.sin((1 - t) * theta) * a64 + torch.sin(t * theta) * b64) / torch.sin(theta)
    return out.view(a.shape)


def slerp_merge(states: Sequence[State], linear: list[str] | None = None) -> dict[str, Tensor]:
    """Slerp of N checkpoints, oldest first, as a running mean on the sphere:
    m_1 = s_1, m_k = slerp(m_{k-1}, s_k, 1/k) per tensor. For N = 2 it is the slerp midpoint;
    where every pair is colinear it is the soup (the running mean's recursion; equal up to
    rounding). `linear` collects the names of tensors that took the colinear branch at some k.
    """

    def running(tensors: Sequence[Tensor], key: str) -> Tensor:
        merged = tensors[0].double()
        for k, t in enumerate(tensors[1:], start=2):
            if linear is not None and key not in linear and colinear(merged, t):
                linear.append(key)
            merged = slerp(merged, t, 1.0 / k)
        return merged

    return _merge(states, running)


def _merge(states: Sequence[State], combine: Callable[[Sequence[Tensor], str], Tensor]
           ) -> dict[str, Tensor]:
    if not states:
        raise ValueError("nothing to merge")
    keys = list(states[0])
    for i, s in enumerate(states[1:], start=1):
        if set(s) != set(keys):
            raise ValueError(f"checkpoint {i} has other tensors than checkpoint 0: "
                             f"{sorted(set(s) ^ set(keys))[:5]}")
    merged = {}
    for key in keys:
        tensors = [s[key] for s in states]
        if not tensors[0].is_floating_point():
            # Integer buffers (counters, ids) are not averaged; they must agree.
            if any(not torch.equal(tensors[0], t) for t in tensors[1:]):
                raise ValueError(f"{key}: integer tensor differs between checkpoints")
            merged[key] = tensors[0].clone()
            continue
        merged[key] = combine(tensors, key).to(tensors[0].dtype)
    return merged


METHODS = ("soup", "slerp")


def last_checkpoints(run: Path, last: int) -> list[tuple[int, Path]]:
    """The run's `last` newest checkpoints by training step, oldest first, one file per step
    (a step's own file before `last.ckpt` or a stage-end copy of the same step)."""
    folder = run / "checkpoints"
    files = sorted(folder.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.name))
    by_step: dict[int, Path] = {}
    for f in files:
        if f.is_dir():
            raise ValueError(f"{f}: a sharded (FSDP) checkpoint; consolidate it to one file first")
        step = int(torch.load(f, map_location="cpu", weights_only=True, mmap=True)["global_step"])
        by_step.setdefault(step, f)
    if len(by_step) < last:
        raise FileNotFoundError(
            f"{folder}: {len(by_step)} checkpoint(s) at distinct steps "
            f"({sorted(by_step)}), last={last} asked. Train with "
            "callbacks.checkpoint.save_top_k=-1 to keep every step checkpoint")
    return [(s, by_step[s]) for s in sorted(by_step)[-last:]]


def encoder_weights(ckpt: Path) -> dict[str, Tensor]:
    """The encoder's tensors of a Lightning checkpoint (optimiser state never read)."""
    from f2llm.model.vocab import untrimmed_state

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    # A run trained with a trimmed vocabulary (`callbacks.vocab_trim`) stores it trimmed.
    return untrimmed_state({k.removeprefix("encoder."): v for k, v in state.items()
                            if k.startswith("encoder.")})


def merge(cfg: DictConfig) -> Path:
    from f2llm.export import export_sentence_transformers

    run = Path(cfg.run)
    saved = run / ".hydra" / "config.yaml"
    if not saved.exists():
        raise FileNotFoundError(f"run={run}: no {saved} to rebuild the model from")
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method}: one of {sorted(METHODS)}")
    if int(cfg.last) < 1:
        raise ValueError(f"last={cfg.last}: at least 1")
    chosen = last_checkpoints(run, int(cfg.last))
    states = [encoder_weights(path) for _, path in chosen]
    linear: list[str] = []
    merged = soup(states) if cfg.method == "soup" else slerp_merge(states, linear)

    encoder = instantiate(OmegaConf.load(saved).model)
    try:
        encoder.load_state_dict(merged)
    except RuntimeError as err:
        raise RuntimeError(f"{run}: the checkpoints do not fit the model its config builds "
                           f"(a pruned run?): {err}") from err
    out = Path(cfg.out)
    export_sentence_transformers(encoder, out)
    # Prompts depend on the run's config, not on the weights: the run's own export has them.
    prompts = run / "export" / "config_sentence_transformers.json"
    if prompts.exists():
        shutil.copyfile(prompts, out / "config_sentence_transformers.json")
    else:
        log.warning("%s has no export/: the merged model gets no instruction prompts", run)
    record = {"run": str(run), "method": cfg.method,
              "checkpoints": [{"step": step, "file": path.name} for step, path in chosen]}
    if cfg.method == "slerp":
        # Checkpoints of one run are often colinear tensor by tensor: slerp is then the soup.
        record["slerp_linear_tensors"] = f"{len(linear)} of {len(merged)}"
    (out / "merge.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("merged %s of %s by %s into %s", [s for s, _ in chosen], run, cfg.method, out)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="merge")
def main(cfg: DictConfig) -> None:
    merge(cfg)


if __name__ == "__main__":
    exit_without_final_collection()
    main()
