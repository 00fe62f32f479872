"""The packed Qwen3 encoder against plain sentence-transformers, on the tiny stand-in.

One batch mixes texts of about 5, 60 and 700 tokens, so a packing, position, rotary or pooling
mistake (attention leaking across sequences, positions not restarting, the wrong last token)
changes the vectors. On CPU the probe picks eager FlexAttention (varlen needs CUDA); each kernel,
the fallback when one fails, and per-sequence SDPA are checked here too.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.core.errors import ConfigError, DeviceOutOfMemory
from workers.embedding import attention, load_encoder
from workers.embedding.base import fit_dimension
from workers.embedding.model_info import ModelInfo, resolve_model
from workers.embedding.qwen3_packed import PackedQwen3Encoder, supports

POLICY_VI = (
    "Nhân viên chính thức được hưởng mười hai ngày nghỉ phép có lương mỗi năm, cộng thêm một ngày cho mỗi "
    "năm năm làm việc. Đơn xin nghỉ phải gửi cho quản lý trực tiếp ít nhất ba ngày làm việc trước ngày nghỉ, "
    "trừ trường hợp ốm đau hoặc việc gia đình khẩn cấp. Số ngày phép chưa dùng hết được chuyển sang quý một "
    "của năm sau; sau ngày ba mươi mốt tháng ba, phần còn lại sẽ bị hủy. Phòng nhân sự gửi bảng tổng hợp "
    "ngày phép vào đầu mỗi tháng qua thư điện tử nội bộ. "
)
TEXTS = [
    "Nghỉ phép năm?",
    "Every company laptop must use full-disk encryption, lock its screen after five minutes without input, "
    "and receive security updates within seven days of their release by the vendor. Lost or stolen devices "
    "must be reported to the security team within one hour, so that they can be wiped remotely.",
    POLICY_VI * 6,
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def packed(qwen_tiny: str) -> PackedQwen3Encoder:
    return PackedQwen3Encoder(resolve_model(qwen_tiny), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(qwen_tiny: str) -> np.ndarray:
    """Plain sentence-transformers in fp32: padded batch, its own last-token pooling."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(qwen_tiny, device="cpu", model_kwargs={"dtype": torch.float32})
    return model.encode(TEXTS, normalize_embeddings=True)


def test_texts_have_very_different_lengths(packed):
    short, medium, long = (len(ids) for ids in packed.tokenize(TEXTS))
    assert short <= 8 and 40 <= medium <= 90 and 600 <= long <= 900


def test_packed_batch_equals_sentence_transformers(packed, reference):
    ours = packed.encode_documents(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), packed.info.dim)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert cosines(ours, reference).min() >= 0.999
    # Different texts give different vectors, so the equality above says something.
    assert cosines(ours, np.roll(reference, 1, axis=0)).max() < 0.99


def test_item_in_a_packed_batch_equals_item_alone(packed):
    together = packed.encode_documents(TEXTS)
    alone = np.stack([packed.encode_documents([text])[0] for text in TEXTS])
    assert cosines(together, alone).min() >= 0.9999


def test_order_in_the_batch_does_not_matter(packed):
    forward = packed.encode_documents(TEXTS)
    backward = packed.encode_documents(TEXTS[::-1])[::-1]
    assert cosines(forward, backward).min() >= 0.9999


def test_bf16_stays_close_to_fp32_sentence_transformers(qwen_tiny, reference):
    encoder = PackedQwen3Encoder(resolve_model(qwen_tiny), device="cpu", dtype=torch.bfloat16)
    vectors = encoder.encode_documents(TEXTS)
    assert vectors.dtype == np.float32
    assert cosines(vectors, reference).min() >= 0.99


def test_truncation_is_the_renormalised_prefix(packed):
    full = packed.encode_documents(TEXTS)
    short = packed.forward(packed.collate(packed.tokenize(TEXTS)), 16)
    assert short.shape == (len(TEXTS), 16)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    assert np.allclose(short, fit_dimension(full, 16), atol=1e-5)


def test_collate_packs_tokens_with_restarting_positions(packed):
    batch = packed.collate([[11, 12, 13], [21], [31, 32, 33, 34]])
    assert batch.input_ids.tolist() == [11, 12, 13, 21, 31, 32, 33, 34]
    assert batch.input_ids.dtype == torch.int64
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 8]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.max_len == 4
    assert (batch.tokens, batch.sequences) == (8, 3)
    with pytest.raises(ValueError):
        packed.collate([[1, 2], []])


def test_the_probe_picks_a_packed_kernel_that_runs_here_and_says_why_the_others_did_not(packed):
    assert packed.attention.path == "flex"  # on CPU: eager FlexAttention
    assert "CUDA" in packed.attention.passed_over["varlen"]
    assert "nested" in packed.attention.passed_over


@pytest.mark.parametrize("kernel", ["flex", "reference"])
def test_each_kernel_gives_sentence_transformers_vectors(qwen_tiny, reference, kernel):
    chosen = attention.probe("cpu", torch.float32, 4, 2, 16, allowed=("flex",))
    if kernel == "reference":
        chosen.kernels = []  # per-sequence SDPA, the last resort
    encoder = PackedQwen3Encoder(resolve_model(qwen_tiny), device="cpu", dtype=torch.float32, choice=chosen)
    assert cosines(encoder.encode_documents(TEXTS), reference).min() >= 0.999


def test_a_kernel_that_fails_on_a_batch_is_passed_over_and_the_batch_is_embedded(qwen_tiny, reference):
    def broken(*args):
        raise RuntimeError("an illegal memory access was encountered")

    chosen = attention.probe("cpu", torch.float32, 4, 2, 16, allowed=("flex",))
    chosen.kernels.insert(0, ("varlen", broken))
    encoder = PackedQwen3Encoder(resolve_model(qwen_tiny), device="cpu", dtype=torch.float32, choice=chosen)
    vectors = encoder.encode_documents(TEXTS)
    assert [name for name, _ in encoder._kernels] == ["flex"]  # varlen is not tried again
    assert cosines(vectors, reference).min() >= 0.999


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, causal, gqa):
    """A varlen_attn stand-in: checks what it is given as the real one would, then attends exactly."""
    assert causal, "called without causal attention"
    if not gqa:
        assert k.shape[1] == q.shape[1], "KV heads not expanded for a varlen_attn without enable_gqa"
    packing = attention.Packing(cu_q, max_q, cu_q.tolist())
    return attention.reference(q, k, v, packing, scale or q.shape[-1] ** -0.5)


def varlen_2_10(q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False, return_aux=None, scale=None):
    return reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, causal=is_causal, gqa=False)


def varlen_2_11(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
    assert isinstance(window_size, tuple)
    causal = window_size == (-1, 0)
    return reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, causal=causal, gqa=False)


def varlen_2_12(
    q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), enable_gqa=False,
    seqused_k=None, block_table=None, num_splits=None,
):  # fmt: skip
    assert num_splits == 1, "a split count chosen per batch makes vectors depend on the batch"
    causal = window_size == (-1, 0)
    return reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, causal=causal, gqa=enable_gqa)


@pytest.mark.parametrize("varlen", [varlen_2_10, varlen_2_11, varlen_2_12], ids=["2.10", "2.11", "2.12+"])
def test_varlen_is_called_through_the_signature_of_each_torch_release(varlen):
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(36, heads, 16, generator=generator) for heads in (4, 2, 2))
    packing = attention.make_packing([5, 17, 3, 11], "cpu")
    got = attention.varlen_kernel(varlen)(q, k, v, packing, 0.25)
    assert torch.allclose(got, attention.reference(q, k, v, packing, 0.25), atol=1e-5)


def test_packed_attention_asked_for_but_unavailable_fails_at_start(qwen_tiny, minilm, monkeypatch):
    with pytest.raises(ConfigError, match="needs a Qwen3 embedding model"):
        load_encoder(minilm, "cpu", "packed")
    monkeypatch.setattr(attention, "candidates", lambda device: [("varlen", lambda: attention.varlen_kernel(print))])
    with pytest.raises(ConfigError, match="no packed attention kernel works here"):
        load_encoder(qwen_tiny, "cpu", "packed")
    assert load_encoder(qwen_tiny, "cpu", "auto").attention.path == "padded"  # auto on CPU: padded


def test_device_out_of_memory_is_translated(packed, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(packed, "_hidden_states", exhausted)
    with pytest.raises(DeviceOutOfMemory, match="3 sequences"):
        packed.encode_documents(TEXTS)


def _copy_configs(source: str, target: Path) -> Path:
    """The model's JSON files only: `supports` reads nothing else."""
    for path in Path(source).rglob("*.json"):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, destination)
    return target


def _info(path: Path | str) -> ModelInfo:
    return ModelInfo(name=str(path), path=Path(path), dim=64, max_seq_length=8192)


def test_supports_qwen3_with_last_token_pooling_only(qwen_tiny, minilm, tmp_path):
    assert supports(resolve_model(qwen_tiny))
    assert not supports(resolve_model(minilm))
    assert not supports(resolve_model("fake:32"))

    legacy = _copy_configs(qwen_tiny, tmp_path / "legacy")  # the hub's Qwen3-Embedding writes flags
    flags = {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": False, "pooling_mode_lasttoken": True}
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    assert supports(_info(legacy))

    mean = _copy_configs(qwen_tiny, tmp_path / "mean")
    (mean / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, "pooling_mode": "mean"}))
    assert not supports(_info(mean))

    dense = _copy_configs(qwen_tiny, tmp_path / "dense")
    modules = json.loads((dense / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    assert not supports(_info(dense))
