"""Packed ("varlen") forward for Qwen3 embedding models: no compute spent on padding.

A padded batch costs longest × count tokens, and SDPA with a padding mask never takes the
FlashAttention kernel. Here the batch's sequences are concatenated into one flat token sequence
and `cu_seqlens` marks where each starts, so attention stays inside a sequence (causal, GQA) and
each vector is its sequence's last token, the appended <|endoftext|> — as TEI's `flash_qwen3.rs`.

The transformer's own modules and weights run layer by layer; only attention is replaced. On CUDA
in bf16/fp16 it is `torch.nn.attention.varlen.varlen_attn` (FlashAttention varlen). Elsewhere a loop
of SDPA calls, one per sequence, computes the same thing, so CPU tests check the packing, positions,
rotary embedding and pooling.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.embedding.model_info import ModelInfo
from workers.embedding.sentence_transformer import SentenceTransformerEncoder
from workers.errors import ConfigError, DeviceOutOfMemory

log = logging.getLogger(__name__)

_FLASH_DTYPES = (torch.bfloat16, torch.float16)
_CAUSAL = (-1, 0)  # varlen_attn's window for causal attention; it must be this tuple, not a list


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


def _attend_per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], scale: float
) -> torch.Tensor:
    """Reference attention: causal GQA SDPA on each sequence's slice of the (T, heads, head_dim) tensors."""
    outputs = []
    for start, end in pairwise(bounds):
        q_s, k_s, v_s = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q_s, k_s, v_s, is_causal=True, scale=scale, enable_gqa=True)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def _varlen_kernel(device: str, dtype: torch.dtype) -> Callable | None:
    """torch's FlashAttention varlen op where it can run: CUDA, half precision, Ampere or newer."""
    if not device.startswith("cuda") or dtype not in _FLASH_DTYPES:
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if torch.cuda.get_device_capability(device) >= (8, 0) else None


class PackedQwen3Encoder(SentenceTransformerEncoder):
    """Qwen3-Embedding over packed batches; tokenizing and query encoding are the parent's."""

    packs_sequences = True

    def __init__(self, info: ModelInfo, device: str = "auto", dtype: torch.dtype | None = None):
        super().__init__(info, device=device, dtype=dtype)
        self.qwen = self.model[0].auto_model
        if self.qwen.config.model_type != "qwen3":
            raise ConfigError(f"{info.name} is a {self.qwen.config.model_type!r} model, not qwen3")
        self._varlen = _varlen_kernel(self.device, self.dtype)
        log.info("packed Qwen3 attention: %s", "varlen_attn" if self._varlen else "per-sequence SDPA")

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
            hidden = self._hidden_states(on_device, bounds=batch.cu_seqlens.tolist())
            last = hidden[on_device.cu_seqlens[1:].long() - 1, :dim]
            return F.normalize(last.float(), dim=-1).cpu().numpy()
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(
                f"CUDA out of memory on a packed batch of {batch.tokens} tokens in {batch.sequences} sequences"
            ) from err

    def _hidden_states(self, batch: PackedBatch, bounds: list[int]) -> torch.Tensor:
        """Qwen3Model.forward on the flat sequence: (T, hidden) after the final norm."""
        model = self.qwen
        hidden = model.embed_tokens(batch.input_ids)
        cos, sin = model.rotary_emb(hidden, batch.position_ids[None])  # (1, T, head_dim) each
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]
        for layer in model.layers:
            hidden = hidden + self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, batch, bounds)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return model.norm(hidden)

    def _attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: PackedBatch,
        bounds: list[int],
    ) -> torch.Tensor:
        """Qwen3Attention on (T, hidden): per-head RMSNorm of q and k before the rotary embedding."""
        heads = (x.shape[0], -1, attn.head_dim)
        q = _rotate(attn.q_norm(attn.q_proj(x).view(heads)), cos, sin)
        k = _rotate(attn.k_norm(attn.k_proj(x).view(heads)), cos, sin)
        v = attn.v_proj(x).view(heads)
        return attn.o_proj(self._attend(q, k, v, batch, bounds, attn.scaling).reshape(x.shape[0], -1))

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, bounds: list[int], scale: float
    ) -> torch.Tensor:
        """Causal attention inside each sequence: the varlen kernel where it runs, else the SDPA loop."""
        if self._varlen is not None:
            try:
                cu, longest = batch.cu_seqlens, batch.max_len
                return self._varlen(
                    q, k, v, cu, cu, longest, longest, scale=scale, window_size=_CAUSAL, enable_gqa=True
                )
            except NotImplementedError as err:
                log.warning("varlen_attn unavailable here (%s); using per-sequence SDPA", err)
                self._varlen = None
        return _attend_per_sequence(q, k, v, bounds, scale)
