"""The exported folder's README.md: a sentence-transformers / Hugging Face model card.

Written once the run's final metrics exist (from `train()`, after `final_metrics.json`): YAML
front matter (library, pipeline, tags, languages, base model, license), the shape and parameter
count, the recipe (stages, steps, batch, objective terms, the realised mix), the held-out table at
every Matryoshka dim with the figure, and a usage snippet with the prompt names.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from omegaconf import DictConfig

from f2llm import __version__
from f2llm.data.formats import FORMATS
from f2llm.model.encoder import attention_of, folder_pooling
from f2llm.objective.matryoshka import matryoshka_dims, matryoshka_weights

FIGURE = "matryoshka.png"
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")
# gettext and manifest language codes carry regions and scripts (pt_BR, sr@latin); the hub's
# `language` field takes the ISO 639 code.
_BASE_CODE = re.compile(r"[_@\-.]")


@dataclass
class StageFacts:
    name: str
    datasets: list[str]
    instructions: bool
    batches: int  # realised (data_mix.json)


@dataclass
class ModelCard:
    """What the card states; `render()` writes it as Markdown with YAML front matter."""

    folder: str
    name: str  # the model config's name
    license: str
    shape: dict[str, int]
    parameters: int
    max_seq_length: int
    steps: int
    global_batch: int
    world_size: int
    stages: list[StageFacts]
    objective: list[str]
    prompts: dict[str, str]
    metrics: dict[str, float]  # val/<task>/<metric>@<dim>
    evaluated_at: int | None = None  # the step the metrics are from
    mix_by_format: dict[str, float] = field(default_factory=dict)
    languages: dict[str, float] = field(default_factory=dict)  # share of batches, as drawn
    base_model: str | None = None  # a hub name
    init_folder: str | None = None  # a local folder the weights started from
    teacher: str | None = None
    figure: str | None = None
    attention: str = "causal"  # or "bidirectional" (config.json `is_causal`)
    pooling: str = "last"  # or "mean" (the folder's Pooling module)
    version: str = __version__  # of f2llm, the code that trained the model

    def front_matter(self) -> dict[str, Any]:
        codes = sorted({_BASE_CODE.split(code)[0].lower() for code in self.languages} - {""})
        tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "f2llm",
                "qwen3", "matryoshka"]
        if self.teacher:
            tags.append("knowledge-distillation")
        meta: dict[str, Any] = {"library_name": "sentence-transformers",
                                "pipeline_tag": "sentence-similarity", "tags": tags,
                                "license": self.license}
        if codes:
            meta["language"] = codes
        if self.base_model:
            meta["base_model"] = self.base_model
        return meta

    def results_table(self) -> tuple[list[int], dict[str, dict[int, float]]]:
        rows: dict[str, dict[int, float]] = {}
        for name, value in self.metrics.items():
            base, at, dim = name.removeprefix("val/").partition("@")
            if name.startswith("val/") and at and dim.isdigit():
                rows.setdefault(base, {})[int(dim)] = value
        return sorted({d for r in rows.values() for d in r}), rows

    def render(self) -> str:
        s = self.shape
        lines = ["---", yaml.safe_dump(self.front_matter(), sort_keys=False).strip(), "---", "",
                 f"# {self.name}: a text-embedding model trained with f2llm", "",
                 "The F2LLM-v2 recipe: a Qwen3 decoder as the embedder, InfoNCE with hard "
                 "and in-batch negatives, Matryoshka losses. Embeddings are normalised; compare "
                 "them by cosine similarity.", "",
                 "## Model", "",
                 f"- Qwen3 decoder: {s.get('num_hidden_layers')} layer"
                 f"{'s' if s.get('num_hidden_layers') != 1 else ''}, hidden size "
                 f"{s.get('hidden_size')} (the embedding dim), MLP {s.get('intermediate_size')}, "
                 f"{s.get('num_attention_heads')} query / {s.get('num_key_value_heads')} key-value "
                 f"heads of dim {s.get('head_dim')}, vocabulary {s.get('vocab_size')}",
                 f"- {self.parameters:,} parameters",
                 f"- {self.attention} attention, "
                 f"{'last-token (EOS)' if self.pooling == 'last' else 'mean'} pooling, then "
                 f"Normalize; max sequence length {self.max_seq_length} tokens"]
        if self.base_model or self.init_folder:
            lines.append(f"- started from `{self.base_model or self.init_folder}`")
        if self.teacher:
            lines.append(f"- distilled from the teacher `{self.teacher}`")
        lines.append(f"- trained with f2llm {self.version}")
        lines += ["", "## Training recipe", "",
                  f"{self.steps} optimiser steps, global batch {self.global_batch} queries "
                  f"({self.world_size} device{'s' if self.world_size != 1 else ''}); every "
                  "batch comes from one dataset and language.", "",
                  "| stage | datasets | instructions | batches |", "|---|---|---|---|"]
        lines += [f"| {st.name} | {', '.join(st.datasets)} | {'yes' if st.instructions else 'no'}"
                  f" | {st.batches} |" for st in self.stages]
        lines += ["", "Objective:", "", *[f"- {term}" for term in self.objective]]
        if self.mix_by_format:
            mix = ", ".join(f"{k} {v:.1%}" for k, v in sorted(self.mix_by_format.items(),
                                                                key=lambda kv: -kv[1]))
            top = sorted(self.languages.items(), key=lambda kv: -kv[1])[:10]
            lines += ["", f"Realised mix (share of batches): {mix}. "
                          f"{len(self.languages)} languages; the most drawn: "
                          + ", ".join(f"{k} {v:.1%}" for k, v in top) + "."]
        dims, rows = self.results_table()
        lines += ["", "## Held-out results", ""]
        if rows:
            at = self.steps if self.evaluated_at is None else self.evaluated_at
            lines += [f"At step {at}, on held-out data, at every Matryoshka dim:", "",
                      "| task / metric | " + " | ".join(str(d) for d in dims) + " |",
                      "|---|" + "---|" * len(dims)]
            lines += [f"| {base} | " + " | ".join(
                f"{rows[base][d]:.4f}" if d in rows[base] else "" for d in dims) + " |"
                for base in sorted(rows)]
        else:
            lines.append("This run evaluated nothing on held-out data.")
        if self.figure:
            lines += ["", f"![held-out scores by Matryoshka dim]({self.figure})"]
        lines += ["", "## Usage", "", *self.usage()]
        return "\n".join(lines) + "\n"

    def usage(self) -> list[str]:
        dims, _ = self.results_table()
        small = [d for d in (dims or matryoshka_dims(self.shape.get("hidden_size", 8)))
                 if d < self.shape.get("hidden_size", 0)]
        query = self.prompts.get("query")
        named = [n for n, p in self.prompts.items() if p and n != "query" and p != query]
        code = ["```python", "from sentence_transformers import SentenceTransformer", "",
                f'model = SentenceTransformer("{self.folder}")',
                'docs = model.encode(["File not found", "Fichier introuvable"])  # no prompt']
        if self.prompts.get("query"):
            code.append('queries = model.encode(["file missing"], prompt_name="query")')
        if named:
            code.append(f'texts = model.encode(["Cannot open file"], prompt_name="{named[0]}")')
        if small:
            d = small[len(small) // 2]
            code += [f"# a Matryoshka dim: the first {d} of {self.shape.get('hidden_size')} "
                     f"(trained: {', '.join(map(str, small))})",
                     f'small = SentenceTransformer("{self.folder}", truncate_dim={d})']
        code.append("```")
        if not any(self.prompts.values()):
            return code
        table = ["", "Prompts (prepended to the text; documents take none):", "",
                 "| prompt_name | prompt |", "|---|---|"]
        table += [f"| `{n}` | `{p!r}` |" for n, p in self.prompts.items() if p]
        return code + table


def _safetensors_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "np") as f:
            keys = f.keys()  # a safe_open handle is not iterable
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in keys)
    return total


def _objective_terms(cfg: DictConfig, hidden: int) -> list[str]:
    obj, data = cfg.objective, cfg.data
    negatives = {**{f.name: f.num_negatives for f in FORMATS.values()},
                 **(data.get("num_negatives") or {})}
    tau = obj.get("tau", 0.05)
    dims = [int(d) for d in obj.get("mrl_dims") or matryoshka_dims(hidden)]
    weights = list(obj.get("mrl_weights") or matryoshka_weights(dims, hidden))
    terms = []
    if any(negatives.values()):
        terms.append(f"hard-negative InfoNCE over [positive, k hard negatives], τ = {tau}: k = "
                     + ", ".join(f"{k} {fmt}" for fmt, k in negatives.items() if k))
    terms += ["in-batch InfoNCE for "
             + ", ".join(f.name for f in FORMATS.values() if f.use_inbatch)
             + f" batches (each query against every positive of the global batch), τ = {tau}",
             "Matryoshka: each loss at dims " + ", ".join(map(str, dims)) + " with weights "
             + ", ".join(f"{w:.3g}" for w in weights)]
    if cfg.get("teacher"):
        terms.append(f"KD: {obj.get('kd_weight', 1.0)} × MSE(student, teacher cut to the "
                     "student's width) on raw embeddings")
    return terms


def build_model_card(export_dir: str | Path, run_dir: str | Path, cfg: DictConfig,
                     metrics: dict[str, float], steps: int, world_size: int = 1,
                     license: str = "apache-2.0", evaluated_at: int | None = None
                     ) -> ModelCard:
    """Facts from the export folder (shape, weights, prompts), the run folder (data_mix.json,
    the figure), the run's config and its final metrics."""
    export_dir, run_dir = Path(export_dir), Path(run_dir)
    shape_cfg = json.loads((export_dir / "config.json").read_text())
    shape = {k: int(shape_cfg[k]) for k in SHAPE_KEYS if shape_cfg.get(k) is not None}
    st_cfg = json.loads((export_dir / "config_sentence_transformers.json").read_text())
    bert_cfg = json.loads((export_dir / "sentence_bert_config.json").read_text())
    mix = json.loads((run_dir / "data_mix.json").read_text()) if (
        run_dir / "data_mix.json").exists() else {}
    by_stage: Counter[str] = Counter()
    for stage, *_rest, n in mix.get("batches_by_stage_dataset_format_language", []):
        by_stage[stage] += n
    stages = [StageFacts(str(s.name), [str(d) for d in s.datasets], bool(s.get("instructions")),
                         by_stage.get(str(s.name), 0))
              for s in (cfg.data.get("stages") or [])]
    pretrained = cfg.model.get("pretrained")
    local = pretrained is not None and (Path(str(pretrained)).expanduser().exists()
                                        or str(pretrained).startswith((".", "/", "~")))
    teacher = cfg.get("teacher")
    figure = None
    if (run_dir / FIGURE).exists():
        shutil.copyfile(run_dir / FIGURE, export_dir / FIGURE)
        figure = FIGURE
    return ModelCard(
        folder=str(export_dir), name=str(cfg.model.get("name") or export_dir.name),
        license=license, shape=shape,
        parameters=_safetensors_parameters(export_dir),
        max_seq_length=int(bert_cfg.get("max_seq_length", 0)), steps=steps,
        global_batch=int(cfg.data.get("batch_size", 0)), world_size=world_size, stages=stages,
        objective=_objective_terms(cfg, shape.get("hidden_size", 0)),
        prompts={k: v for k, v in (st_cfg.get("prompts") or {}).items()},
        metrics={k: float(v) for k, v in metrics.items()}, evaluated_at=evaluated_at,
        mix_by_format=mix.get("by_format", {}), languages=mix.get("by_language", {}),
        base_model=None if pretrained is None or local else str(pretrained),
        init_folder=str(pretrained) if local else (str(cfg.init_from) if cfg.get("init_from")
                                                   else None),
        teacher=str(teacher.path) if teacher and teacher.get("path") else None,
        figure=figure, attention=attention_of(SimpleNamespace(**shape_cfg)),
        pooling=folder_pooling(export_dir) or "last")


def write_model_card(export_dir: str | Path, run_dir: str | Path, cfg: DictConfig,
                     metrics: dict[str, float], steps: int, world_size: int = 1,
                     license: str = "apache-2.0", evaluated_at: int | None = None) -> Path:
    """Write `<export_dir>/README.md` (and copy the Matryoshka figure next to it)."""
    card = build_model_card(export_dir, run_dir, cfg, metrics, steps, world_size, license,
                            evaluated_at)
    out = Path(export_dir) / "README.md"
    out.write_text(card.render())
    return out


def read_front_matter(readme: str | Path) -> dict[str, Any]:
    """The YAML between the leading `---` lines of a model card."""
    text = Path(readme).read_text()
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4:text.index("\n---", 4)]) or {}
