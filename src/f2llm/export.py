"""Export a trained encoder as a sentence-transformers folder that plain transformers loads too."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from f2llm.model import Encoder
from f2llm.model.encoder import POOLING_MODES
from f2llm.model.vocab import TrimmedEmbedding, untrim_input_embeddings

# Written in the long-standing module format that every sentence-transformers release reads.
_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize",
     "type": "sentence_transformers.models.Normalize"},
]


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def export_sentence_transformers(
    encoder: Encoder,
    path: str | Path,
    query_instruction: str | None = None,
    model_card: str | None = None,
    task_instructions: dict[str, str] | None = None,
) -> Path:
    """Write weights, tokenizer (EOS-appending), the encoder's pooling, Normalize and prompts.

    `query_instruction` becomes the "query" prompt; `task_instructions` add named prompts
    (e.g. `encode(texts, prompt_name="gettext_domains")`).

    The tokenizer's post-processor appends EOS, so `SentenceTransformer(path)` and
    `AutoTokenizer` + `AutoModel` both see exactly the token sequences used in training.
    Bidirectional attention needs no custom code: config.json carries `is_causal: false`,
    which transformers' Qwen3 honours on load (`f2llm.model.encoder.set_attention`).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    backbone = encoder.backbone
    if hasattr(backbone, "merge_and_unload"):
        # LoRA: export plain weights with the adapters merged in (on a copy: training's
        # adapters stay as they are).
        backbone = copy.deepcopy(backbone).merge_and_unload()
    if isinstance(backbone.get_input_embeddings(), TrimmedEmbedding):
        # Trained with a trimmed vocabulary: the export is the full one (on a copy).
        backbone = copy.deepcopy(backbone)
        untrim_input_embeddings(backbone)
    backbone.config.architectures = [type(backbone).__name__]
    backbone.save_pretrained(out, safe_serialization=True)
    encoder.tokenizer.save_pretrained(out)
    _write_json(out / "modules.json", _MODULES)
    _write_json(out / "sentence_bert_config.json",
                {"max_seq_length": encoder.max_length, "do_lower_case": False})
    modes = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
             "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
             "pooling_mode_lasttoken")
    # include_prompt: the instruction's tokens count in the mean, as they did in training.
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": encoder.hidden_size,
        **{mode: mode == POOLING_MODES[encoder.pooling] for mode in modes},
        "include_prompt": True,
    })
    (out / "2_Normalize").mkdir(exist_ok=True)
    prompts = {"query": encoder.query_prompt(query_instruction) if query_instruction else "",
               "document": ""}
    for name, instruction in (task_instructions or {}).items():
        prompts[name] = encoder.query_prompt(instruction)
    _write_json(out / "config_sentence_transformers.json", {
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    if model_card:
        (out / "README.md").write_text(model_card)
    return out
