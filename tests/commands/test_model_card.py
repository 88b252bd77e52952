"""The export's model card: written after the final validation, loadable, with the run's facts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer

import f2llm
from f2llm.model_card import read_front_matter
from tests.conftest import run_folders


@pytest.fixture(scope="module")
def run(trained_repo: Path) -> Path:
    return run_folders(trained_repo)[0]


def card_table(text: str) -> dict[str, float]:
    """`<task>/<metric>@<dim>` -> value from the card's held-out results table."""
    lines = text.split("## Held-out results", 1)[1].splitlines()
    header = next(line for line in lines if line.startswith("| task / metric |"))
    dims = [int(d) for d in re.findall(r"\d+", header)]
    table: dict[str, float] = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        table |= {f"{cells[0]}@{d}": float(v) for d, v in zip(dims, cells[1:], strict=True) if v}
    return table


def test_card_loads_parses_and_holds_the_final_metrics(run: Path) -> None:
    export = run / "export"
    card = (export / "README.md").read_text()
    meta = read_front_matter(export / "README.md")
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "matryoshka"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0"
    assert "base_model" not in meta  # the default trains from a random init
    mix = json.loads((run / "data_mix.json").read_text())
    assert meta["language"] == sorted({k.split("_")[0].split("@")[0] for k in mix["by_language"]})

    # Every held-out metric at every evaluated dim, as final_metrics.json holds it.
    final = {k.removeprefix("val/"): v for k, v in
             json.loads((run / "final_metrics.json").read_text()).items()
             if k.startswith("val/") and "@" in k}
    dims = {int(k.split("@")[1]) for k in final}
    assert dims == {32, 16, 8}
    # The card was written after the validation that followed fit (step 4), not at the end of
    # fit, whose latest metrics are step 3's.
    evals = [json.loads(line) for line in (run / "matryoshka_eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 4]
    assert evals[-1]["metrics"] != evals[0]["metrics"]
    assert {k: v for k, v in evals[-1]["metrics"].items() if k in final} == pytest.approx(final)
    assert "At step 4, on held-out data" in card
    table = card_table(card)
    assert table.keys() == final.keys()
    for key, value in final.items():
        assert table[key] == pytest.approx(value, abs=5e-5), key

    # Shape, parameter count, recipe, figure, usage.
    model = SentenceTransformer(str(export), device="cpu")
    parameters = sum(p.numel() for p in model[0].auto_model.parameters())
    assert f"- {parameters:,} parameters" in card
    assert "hidden size 32" in card and "4 optimiser steps, global batch 8" in card
    assert "| stage1 | gettext_bitext | no | 2 |" in card
    assert "| stage2 | gettext_bitext, gettext_domains, gettext_names | yes | 2 |" in card
    assert "Matryoshka: each loss at dims 32, 16, 8" in card
    assert "Realised mix (share of batches):" in card
    assert "![held-out scores by Matryoshka dim](matryoshka.png)" in card
    assert (export / "matryoshka.png").read_bytes() == (run / "matryoshka.png").read_bytes()
    for name in model.prompts:
        if model.prompts[name]:
            assert f"| `{name}` |" in card
    assert 'prompt_name="query"' in card and "truncate_dim=16" in card
    assert f"- trained with f2llm {f2llm.__version__}\n" in card

    # The usage snippet's calls work on the folder.
    small = SentenceTransformer(str(export), device="cpu", truncate_dim=16)
    full = model.encode(["File not found"], convert_to_tensor=True)
    cut = small.encode(["File not found"], convert_to_tensor=True)
    assert cut.shape[-1] == 16
    torch.testing.assert_close(cut, full[:, :16], atol=1e-5, rtol=0)
    assert model.encode(["x"], prompt_name="query").shape == (1, 32)


def test_card_facts_from_config_mix_and_metrics(tmp_path: Path, locale_dir: Path) -> None:
    from f2llm.export import export_sentence_transformers
    from f2llm.model_card import build_model_card
    from tests.conftest import compose_train, tiny_encoder, tiny_overrides

    export = export_sentence_transformers(tiny_encoder(), tmp_path / "export", "Find it")
    run = tmp_path
    (run / "data_mix.json").write_text(json.dumps({
        "batches": 10, "by_format": {"retrieval": 0.7, "clustering": 0.3},
        "by_language": {"pt_BR": 0.5, "sr@latin": 0.3, "de": 0.2},
        "batches_by_stage_dataset_format_language": [["stage1", "gettext_bitext", "retrieval",
                                                      "pt_BR", 7], ["stage2", "gettext_domains",
                                                                    "clustering", "de", 3]]}))
    metrics = {"val/bitext/accuracy@32": 0.5, "val/bitext/accuracy@16": 0.25,
               "val/bitext/accuracy": 0.5, "train/loss": 1.0}
    hub = compose_train(tiny_overrides(tmp_path, locale_dir,
                                       **{"model.pretrained": "Qwen/Qwen3-0.6B"}))
    card = build_model_card(export, run, hub, metrics, steps=10, evaluated_at=8)
    meta = card.front_matter()
    assert meta["base_model"] == "Qwen/Qwen3-0.6B"
    assert meta["language"] == ["de", "pt", "sr"]  # ISO 639, regions and scripts dropped
    assert "knowledge-distillation" not in meta["tags"]
    text = card.render()
    assert "At step 8, on held-out data" in text  # the metrics' step, not the last step
    assert "| bitext/accuracy | 0.2500 | 0.5000 |" in text and "train/loss" not in text
    assert "| stage1 | gettext_bitext | no | 7 |" in text
    assert "Realised mix (share of batches): retrieval 70.0%, clustering 30.0%" in text
    assert "pt_BR 50.0%, sr@latin 30.0%, de 20.0%" in text
    assert "in-batch InfoNCE for retrieval batches" in text
    assert 'prompt_name="query"' in text
    assert "- causal attention, last-token (EOS) pooling, then Normalize" in text
    assert f"- trained with f2llm {f2llm.__version__}" in text
    bi = export_sentence_transformers(tiny_encoder(attention="bidirectional", pooling="mean"),
                                      tmp_path / "bidirectional")
    assert "- bidirectional attention, mean pooling, then Normalize" in build_model_card(
        bi, run, hub, metrics, steps=10).render()

    local = compose_train(tiny_overrides(tmp_path, locale_dir,
                                         **{"model.pretrained": str(export)}))
    card = build_model_card(export, run, local, metrics, steps=10)
    assert "base_model" not in card.front_matter()  # a local folder is not a hub name
    assert f"- started from `{export}`" in card.render()
