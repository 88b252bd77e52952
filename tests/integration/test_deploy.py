"""What docs/deploy.md promises about the export, on small exports of both poolings: Matryoshka
dims through `truncate_dim`, quantized embeddings, the plain-transformers snippet as written
(equal to sentence-transformers), and the ONNX backend's message without Optimum."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.quantization import quantize_embeddings

from f2llm.export import export_sentence_transformers
from tests.conftest import ROOT, tiny_encoder

DEPLOY = ROOT / "docs" / "deploy.md"
# Texts of different lengths, so a batch is padded.
TEXTS = ["File not found", "Impossible d'ouvrir le fichier demandé", "Datei", "¿Dónde está?"]


@pytest.fixture(scope="module", params=["last", "mean"])
def export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    attention = "causal" if request.param == "last" else "bidirectional"
    encoder = tiny_encoder(attention=attention, pooling=request.param)
    return export_sentence_transformers(encoder, tmp_path_factory.mktemp(request.param)
                                        / "export", "Find the text")


def snippet(first_line: str) -> str:
    """The ```python block of docs/deploy.md that starts with `first_line`."""
    blocks = re.findall(r"^```python\n(.*?)^```", DEPLOY.read_text(), re.M | re.S)
    (body,) = [b for b in blocks if b.startswith(first_line)]
    return body


def test_truncate_dim_is_the_matryoshka_prefix(export: Path) -> None:
    full = SentenceTransformer(str(export), device="cpu")
    small = SentenceTransformer(str(export), device="cpu", truncate_dim=16)
    a = full.encode(TEXTS, convert_to_tensor=True)
    b = small.encode(TEXTS, convert_to_tensor=True)
    assert b.shape == (len(TEXTS), 16)
    torch.testing.assert_close(b, a[:, :16], rtol=0, atol=1e-6)
    # Cut after normalisation: compared by cosine, as the held-out evaluation scores a dim.
    assert (b.norm(dim=-1) < 1).all()
    prefix = torch.nn.functional.normalize(a[:, :16], dim=-1)
    torch.testing.assert_close(small.similarity(b, b), prefix @ prefix.T, rtol=0, atol=1e-5)


def test_quantized_embeddings(export: Path) -> None:
    model = SentenceTransformer(str(export), device="cpu", truncate_dim=16)
    emb = model.encode(TEXTS)
    bits = quantize_embeddings(emb, precision="ubinary")
    assert bits.dtype == np.uint8 and bits.shape == (len(TEXTS), 2)
    np.testing.assert_array_equal(bits, np.packbits(emb > 0, axis=-1))
    calibration = SentenceTransformer(str(export), device="cpu", truncate_dim=16).encode(
        [f"{t} {i}" for i in range(8) for t in TEXTS])
    int8 = quantize_embeddings(emb, precision="int8", calibration_embeddings=calibration)
    assert int8.dtype == np.int8 and int8.shape == emb.shape
    # Each dim mapped linearly onto [-128, 127]: the order of values within a dim is kept.
    for d in range(emb.shape[1]):
        order = np.argsort(emb[:, d], kind="stable")
        assert (np.diff(int8[order, d].astype(int)) >= 0).all()


def test_plain_transformers_snippet_equals_sentence_transformers(export: Path) -> None:
    code = snippet("# Plain transformers").replace("logs/train/runs/<time>/export", str(export))
    code = code.replace('["File not found", "Fichier introuvable"]', repr(TEXTS))
    assert repr(TEXTS) in code
    scope: dict[str, object] = {}
    exec(compile(code, str(DEPLOY), "exec"), scope)
    expected = SentenceTransformer(str(export), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(scope["emb"], expected, rtol=0, atol=1e-5)


def test_onnx_backend_without_optimum_names_what_to_install(export: Path) -> None:
    if importlib.util.find_spec("optimum") is not None:
        pytest.skip("Optimum is installed here")
    with pytest.raises(Exception, match="requires installing Optimum and ONNX Runtime"):
        SentenceTransformer(str(export), device="cpu", backend="onnx")
    assert "Using the ONNX backend requires installing Optimum and ONNX" in " ".join(
        DEPLOY.read_text().split())
