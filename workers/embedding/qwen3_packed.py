"""Packed forward for Qwen3 embedding models: no compute spent on padding.

A padded batch costs longest × count tokens, and SDPA with a padding mask never takes the
FlashAttention kernel. Here the batch's sequences are concatenated into one flat token sequence
and `cu_seqlens` marks where each starts, so attention stays inside a sequence (causal, GQA) and
each vector is its sequence's last token, the appended <|endoftext|> — as TEI's `flash_qwen3.rs`.

The transformer's own modules and weights run layer by layer; only attention is replaced, by the
kernel the probe chose at start (`attention.py`: varlen, flex or nested). A kernel that fails on a
batch is passed over from then on and the batch goes to the next one; the last resort is exact
per-sequence SDPA, so a kernel error never fails a batch.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers import metrics
from workers.core.errors import ConfigError, DeviceOutOfMemory
from workers.embedding import attention
from workers.embedding.attention import Choice, Packing
from workers.embedding.model_info import ModelInfo
from workers.embedding.sentence_transformer import SentenceTransformerEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PackedBatch:
    """All sequences of a batch as one flat sequence; sequence i is tokens cu_seqlens[i]:cu_seqlens[i+1]."""

    input_ids: torch.Tensor  # (T,) int64
    position_ids: torch.Tensor  # (T,) int64, 0.. restarting in each sequence
    cu_seqlens: torch.Tensor  # (N+1,) int32, starts with 0
    max_len: int

    @property
    def tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def sequences(self) -> int:
        return self.cu_seqlens.shape[0] - 1

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "PackedBatch":
        """The same batch with `fn` applied to each tensor (pinning, a copy to the device)."""
        return PackedBatch(fn(self.input_ids), fn(self.position_ids), fn(self.cu_seqlens), self.max_len)


def _read_json(path: Path) -> dict | list:
    return json.loads(path.read_text()) if path.is_file() else {}


def supports(info: ModelInfo) -> bool:
    """True for a Qwen3 model whose sentence-transformers pipeline is Transformer → Pooling(last token)
    → optional Normalize: exactly what `PackedQwen3Encoder.forward` computes. A Dense layer or another
    pooling mode would need the remaining modules, so those models stay on the padded encoder."""
    if info.path is None:
        return False
    config = _read_json(info.path / "config.json")
    if config.get("model_type") != "qwen3" or config.get("use_sliding_window"):
        return False
    modules = _read_json(info.path / "modules.json")
    kinds = [module.get("type", "").rsplit(".", 1)[-1] for module in modules] if isinstance(modules, list) else []
    if kinds[:2] != ["Transformer", "Pooling"] or any(kind != "Normalize" for kind in kinds[2:]):
        return False
    pooling = _read_json(info.path / modules[1].get("path", "") / "config.json")
    # sentence-transformers 6 writes `pooling_mode`; older releases (and the hub's Qwen3-Embedding) flags.
    flags = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value is True]
    return pooling.get("pooling_mode") in ("lasttoken", ["lasttoken"]) or flags == ["pooling_mode_lasttoken"]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (T, heads, head_dim) with per-token (T, 1, head_dim) cos/sin (HF's half split)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class PackedQwen3Encoder(SentenceTransformerEncoder):
    """Qwen3-Embedding over packed batches; tokenizing and query encoding are the parent's."""

    packs_sequences = True

    def __init__(
        self,
        info: ModelInfo,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        choice: Choice | None = None,
        quantize: str = "none",
    ):
        super().__init__(info, device=device, dtype=dtype, quantize=quantize)
        self.qwen = self.model[0].auto_model
        if self.qwen.config.model_type != "qwen3":
            raise ConfigError(f"{info.name} is a {self.qwen.config.model_type!r} model, not qwen3")
        self.attention = choice or probe_for(self.qwen.config, self.device, self.dtype)
        # Kernels that work here, best first; a kernel that fails on a batch leaves this list.
        self._kernels = list(self.attention.kernels)

    def collate(self, ids: list[list[int]]) -> PackedBatch:
        """Concatenate the sequences; positions restart at 0 in each, as if each were alone."""
        lengths = torch.tensor([len(sequence) for sequence in ids], dtype=torch.int64)
        if lengths.numel() == 0 or int(lengths.min()) == 0:
            raise ValueError("a packed batch needs at least one sequence and no empty one")
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths)
        batch = PackedBatch(
            input_ids=torch.tensor([token for sequence in ids for token in sequence], dtype=torch.int64),
            position_ids=torch.arange(int(lengths.sum())) - starts,
            cu_seqlens=cu_seqlens,
            max_len=int(lengths.max()),
        )
        return batch.map(torch.Tensor.pin_memory) if self.on_cuda else batch

    @torch.inference_mode()
    def forward(self, batch: PackedBatch, dim: int) -> np.ndarray:
        try:
            on_device = batch.map(lambda tensor: tensor.to(self.device, non_blocking=True))
            packing = Packing(on_device.cu_seqlens, batch.max_len, batch.cu_seqlens.tolist())
            hidden = self._hidden_states(on_device, packing)
            last = hidden[on_device.cu_seqlens[1:].long() - 1, :dim]
            return F.normalize(last.float(), dim=-1).cpu().numpy()
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(
                f"CUDA out of memory on a packed batch of {batch.tokens} tokens in {batch.sequences} sequences"
            ) from err

    def _hidden_states(self, batch: PackedBatch, packing: Packing) -> torch.Tensor:
        """Qwen3Model.forward on the flat sequence: (T, hidden) after the final norm."""
        model = self.qwen
        hidden = model.embed_tokens(batch.input_ids)
        cos, sin = model.rotary_emb(hidden, batch.position_ids[None])  # (1, T, head_dim) each
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]
        for layer in model.layers:
            hidden = hidden + self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, packing)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return model.norm(hidden)

    def _attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        packing: Packing,
    ) -> torch.Tensor:
        """Qwen3Attention on (T, hidden): per-head RMSNorm of q and k before the rotary embedding."""
        heads = (x.shape[0], -1, attn.head_dim)
        q = _rotate(attn.q_norm(attn.q_proj(x).view(heads)), cos, sin)
        k = _rotate(attn.k_norm(attn.k_proj(x).view(heads)), cos, sin)
        v = attn.v_proj(x).view(heads)
        return attn.o_proj(self._attend(q, k, v, packing, attn.scaling).reshape(x.shape[0], -1))

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float
    ) -> torch.Tensor:
        """Causal attention inside each sequence: the best kernel that works, else exact per-sequence SDPA."""
        while self._kernels:
            name, kernel = self._kernels[0]
            try:
                return kernel(q, k, v, packing, scale)
            except torch.cuda.OutOfMemoryError:
                raise  # the batch is too big, not the kernel broken: the engine splits it
            except Exception as err:  # this kernel cannot do this batch: the next one will, from now on
                self._kernels.pop(0)
                fallback = self._kernels[0][0] if self._kernels else "per-sequence SDPA"
                log.warning("attention kernel %s failed (%s); using %s from now on", name, err, fallback)
                metrics.ATTENTION_FALLBACKS.labels(name).inc()
        return attention.reference(q, k, v, packing, scale)


def model_config(info: ModelInfo):
    """The transformer's config (heads, head size) read from its directory, without its weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(info.path))


def probe_for(config, device: str, dtype: torch.dtype) -> Choice:
    """Probe the packed kernels with this model's heads on `device` (when its encoder is loaded)."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return attention.probe(device, dtype, heads, kv_heads, head_dim)
