"""Our encoders against plain sentence-transformers, and the fake's contract."""

import subprocess
import sys

import numpy as np
import pytest

from workers.core.errors import ConfigError
from workers.embedding import load_encoder, resolve_model
from workers.embedding.base import fit_dimension

TEXTS = [
    "Nhân viên được hưởng mười hai ngày nghỉ phép có lương mỗi năm.",
    "Every company laptop must use full-disk encryption.",
    "Backups run at two in the morning and each copy is kept for thirty days. " * 8,
]


def plain_sentence_transformers(path: str, texts: list[str], **kwargs) -> np.ndarray:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": torch.float32})
    return model.encode(texts, normalize_embeddings=True, **kwargs)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("model", ["minilm", "qwen_tiny"])
def test_document_vectors_equal_sentence_transformers(request, model):
    path = request.getfixturevalue(model)
    ours = load_encoder(path, "cpu").encode_documents(TEXTS)
    assert ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert cosines(ours, plain_sentence_transformers(path, TEXTS)).min() >= 0.999


def test_qwen_queries_carry_the_instruction_prompt(qwen_tiny):
    encoder = load_encoder(qwen_tiny, "cpu")
    prompt = resolve_model(qwen_tiny).query_prompt
    assert prompt.startswith("Instruct:")
    expected = plain_sentence_transformers(qwen_tiny, TEXTS[:1], prompt=prompt)
    query = encoder.encode_queries(TEXTS[:1])
    assert cosines(query, expected).min() >= 0.999
    assert cosines(query, encoder.encode_documents(TEXTS[:1])).max() < 0.999


def test_item_in_a_batch_equals_item_alone(minilm):
    encoder = load_encoder(minilm, "cpu")
    together = encoder.encode_documents(TEXTS)
    alone = np.stack([encoder.encode_documents([text])[0] for text in TEXTS])
    assert cosines(together, alone).min() >= 0.9999


def test_fake_encoder_is_deterministic_unit_and_lexical():
    encoder = load_encoder("fake:32")
    first = encoder.encode_documents(TEXTS)
    assert first.shape == (3, 32)
    assert np.array_equal(first, load_encoder("fake:32").encode_documents(TEXTS))
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    query = encoder.encode_queries(["full-disk encryption laptop"])[0]
    assert int(np.argmax(first @ query)) == 1


def test_fit_dimension_truncates_and_renormalises():
    vectors = np.array([[3.0, 4.0, 12.0]], dtype=np.float32) / 13
    fitted = fit_dimension(vectors, 2)
    assert np.allclose(fitted, [[0.6, 0.8]])
    with pytest.raises(ConfigError):
        fit_dimension(vectors, 4)


def test_model_info_reads_configs_without_loading(minilm, qwen_tiny):
    mini = resolve_model(minilm)
    assert (mini.dim, mini.max_seq_length, mini.query_prompt) == (384, 256, "")
    qwen = resolve_model(qwen_tiny)
    assert (qwen.dim, qwen.max_seq_length) == (64, 8192)
    assert resolve_model("fake:48").dim == 48


@pytest.mark.parametrize("name", ["/no/such/dir", "./relative-missing", "not a model"])
def test_unknown_model_names_are_config_errors(name):
    with pytest.raises(ConfigError):
        resolve_model(name)


def test_producer_does_not_import_torch():
    code = (
        "import sys, producer.cli, producer.commands, producer.ingest, producer.dispatch; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_producer_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "producer.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("ingest", "status", "search", "retry"):
        assert command in out.stdout
