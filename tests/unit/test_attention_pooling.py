"""Bidirectional attention and mean pooling: what they compute, that padding cannot leak into
either, and that an exported folder embeds the same under every loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Pooling
from transformers import AutoModel

from f2llm.eval import load_embedder
from f2llm.export import export_sentence_transformers
from f2llm.model import attention_of, build_encoder, folder_pooling, mean_pool
from f2llm.model.frozen import build_frozen_encoder
from f2llm.pruning.slicing import prune_backbone
from tests.conftest import copy_encoder, tiny_encoder

COMBOS = [(a, p) for a in ("causal", "bidirectional") for p in ("last", "mean")]
TEXTS = ["Fichier introuvable", "Cannot open file %s for writing", "Файл не найден", "保存", "x"]
TASK = "Retrieve the sentence that is a translation of the given sentence"


def _first_token_states(attention: str, attn_implementation: str, padded: bool) -> tuple:
    """Layer output at position 0 for two inputs that differ only in their last real token."""
    enc = tiny_encoder(attention=attention, attn_implementation=attn_implementation).eval()
    a, b = [1, 2, 3, 4], [1, 2, 3, 9]
    ids = torch.tensor([a + [0] * padded, b + [0] * padded])
    mask = torch.tensor([[1] * 4 + [0] * padded] * 2)
    with torch.no_grad():
        hidden = enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden[0, 0], hidden[1, 0]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [0, 2])
def test_only_bidirectional_lets_an_early_token_see_a_later_one(
        attn_implementation: str, padded: int) -> None:
    # sdpa without padding skips the mask entirely (then only the is_causal flag decides);
    # with padding it gets a materialised mask: both paths are checked, as is eager.
    first_a, first_b = _first_token_states("causal", attn_implementation, padded)
    torch.testing.assert_close(first_a, first_b, atol=1e-6, rtol=0)
    first_a, first_b = _first_token_states("bidirectional", attn_implementation, padded)
    assert (first_a - first_b).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_the_training_path_with_gradient_checkpointing(attention: str) -> None:
    """Train mode, checkpointed layers, token embeddings passed in: the first position's state
    (and its gradient) reaches a later token only when bidirectional."""
    enc = tiny_encoder(attention=attention, gradient_checkpointing=True).train()
    ids = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 3, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]] * 2)
    embeds = enc.backbone.get_input_embeddings()(ids)
    hidden = enc.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    hidden[:, 0].sum().backward()
    sees_later = bool((hidden[0, 0] - hidden[1, 0]).abs().max() > 1e-3)
    later_grad = enc.backbone.get_input_embeddings().weight.grad[9].abs().sum().item()
    assert sees_later is (attention == "bidirectional")
    assert (later_grad > 0) is (attention == "bidirectional")


def test_with_one_layer_the_last_token_is_the_same_either_way() -> None:
    """Why the A/B's bidirectional+last equals causal+last on the 1-layer default
    (docs/benchmarks.md): the last token attends to every token in both, and a single layer's
    keys and values are the token embeddings alone. From two layers on, earlier tokens' states
    differ, and so does it."""
    models = {a: tiny_encoder(attention=a) for a in ("causal", "bidirectional")}

    def last_token(attention: str, layers: int) -> torch.Tensor:
        enc = copy_encoder(models[attention])
        enc.backbone.layers = enc.backbone.layers[:layers]
        enc.backbone.config.num_hidden_layers = layers
        enc.backbone.config.layer_types = enc.backbone.config.layer_types[:layers]
        return enc.encode(TEXTS)

    torch.testing.assert_close(last_token("bidirectional", 1), last_token("causal", 1),
                               atol=1e-6, rtol=0)
    assert (last_token("bidirectional", 2) - last_token("causal", 2)).abs().max() > 1e-3


def test_the_default_is_the_recipe_causal_last_token() -> None:
    enc = tiny_encoder()
    assert (enc.attention, enc.pooling) == ("causal", "last")
    # The config is left as transformers makes it (no flag: causal), so today's exports and
    # teacher-cache fingerprints are unchanged.
    assert not hasattr(enc.backbone.config, "is_causal")


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize(("attention", "pooling"), COMBOS)
def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(
        attention: str, pooling: str, attn_implementation: str, padding_side: str) -> None:
    enc = tiny_encoder(attention=attention, pooling=pooling,
                       attn_implementation=attn_implementation)
    enc.tokenizer.padding_side = padding_side
    batch = enc.tokenize(TEXTS)
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    together = enc.encode(TEXTS, normalize=False)
    alone = torch.cat([enc.encode([t], normalize=False) for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_mean_pool_equals_sentence_transformers_mean_pooling() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    theirs = Pooling(8, pooling_mode="mean")(
        {"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(mean_pool(hidden, mask), theirs)
    # Padding cannot leak in: changing the padded states changes nothing.
    noisy = hidden + 100 * (1 - mask).unsqueeze(-1)
    torch.testing.assert_close(mean_pool(noisy, mask), mean_pool(hidden, mask))


@pytest.mark.parametrize(("attention", "pooling"), COMBOS)
def test_the_export_embeds_identically_under_every_loader(
        tmp_path: Path, attention: str, pooling: str) -> None:
    enc = tiny_encoder(attention=attention, pooling=pooling)
    folder = export_sentence_transformers(enc, tmp_path / "export", query_instruction=TASK)
    ours = enc.encode(TEXTS)
    assert json.loads((folder / "config.json").read_text()).get("is_causal", True) is (
        attention == "causal")
    assert folder_pooling(folder) == pooling
    # No custom code: plain transformers reads the attention from config.json.
    assert attention_of(AutoModel.from_pretrained(folder).config) == attention

    st = SentenceTransformer(str(folder), device="cpu")
    torch.testing.assert_close(st.encode(TEXTS, convert_to_tensor=True, batch_size=2), ours,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(st.encode(TEXTS, prompt_name="query", convert_to_tensor=True),
                               enc.encode(TEXTS, instruction=TASK), atol=1e-5, rtol=0)

    # The project's own loaders: build_encoder (mteb wrapper, fine-tuning from the folder),
    # the teacher and eval.py, with nothing told about attention or pooling.
    again = build_encoder("again", pretrained=folder)
    assert (again.attention, again.pooling) == (attention, pooling)
    torch.testing.assert_close(again.encode(TEXTS), ours, atol=1e-5, rtol=0)
    teacher = build_frozen_encoder(folder, mode="online")
    torch.testing.assert_close(teacher.encoder.encode(TEXTS), ours, atol=1e-5, rtol=0)
    model = load_embedder(folder)
    assert model.width == enc.hidden_size
    torch.testing.assert_close(torch.nn.functional.normalize(model.embed(TEXTS, None), dim=-1),
                               ours, atol=1e-5, rtol=0)


def test_an_explicit_option_overrides_the_folder(tmp_path: Path) -> None:
    folder = export_sentence_transformers(tiny_encoder(attention="bidirectional",
                                                       pooling="mean"), tmp_path / "export")
    enc = build_encoder("x", pretrained=folder, attention="causal", pooling="last")
    assert (enc.attention, enc.pooling) == ("causal", "last")


def test_unknown_options_and_foreign_pooling_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.attention"):
        tiny_encoder(attention="sideways")
    with pytest.raises(ValueError, match=r"model\.pooling"):
        tiny_encoder(pooling="max")
    folder = export_sentence_transformers(tiny_encoder(), tmp_path / "export")
    config = folder / "1_Pooling" / "config.json"
    cls = {**json.loads(config.read_text()), "pooling_mode_lasttoken": False,
           "pooling_mode_cls_token": True}
    config.write_text(json.dumps(cls))
    with pytest.raises(ValueError, match="cls_token"):
        build_encoder("x", pretrained=folder)


def test_pruning_a_bidirectional_model_keeps_it_bidirectional(tmp_path: Path) -> None:
    enc = tiny_encoder(attention="bidirectional", pooling="mean")
    prune_backbone(enc.backbone, {"num_hidden_layers": 1, "hidden_size": 16,
                                  "intermediate_size": 32}, method="first_k")
    assert enc.attention == "bidirectional" and enc.backbone.config.num_hidden_layers == 1
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 9]])
    with torch.no_grad():
        hidden = enc.eval().backbone(input_ids=ids).last_hidden_state
    assert (hidden[0, 0] - hidden[1, 0]).abs().max() > 1e-3
    folder = export_sentence_transformers(enc, tmp_path / "export")
    st = SentenceTransformer(str(folder), device="cpu")
    torch.testing.assert_close(st.encode(TEXTS, convert_to_tensor=True), enc.encode(TEXTS),
                               atol=1e-5, rtol=0)


