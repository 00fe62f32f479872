"""sentence-transformers encoder: the model's own pooling, normalisation and prompts.

bf16 with SDPA attention on CUDA, fp32 elsewhere. Qwen3-Embedding's config gives last-token
pooling and left padding; sentence-transformers' modules apply both in `forward`. Tokenizing,
padding and the forward pass are separate steps so a worker can overlap them.
"""

import logging

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as transformers_logging

from workers.core.errors import DeviceOutOfMemory
from workers.embedding import quantize as quantization
from workers.embedding.attention import Choice
from workers.embedding.base import Encoder
from workers.embedding.model_info import ModelInfo

log = logging.getLogger(__name__)


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def pick_device(device: str) -> str:
    """`auto` means CUDA when present, else Apple MPS, else CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class SentenceTransformerEncoder(Encoder):
    def __init__(
        self,
        info: ModelInfo,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        quantize: str = "none",
        attention: Choice | None = None,
    ):
        super().__init__(info)
        self.device = pick_device(device)
        self.on_cuda = self.device.startswith("cuda")
        self.dtype = dtype or default_dtype(self.device)
        self.attention = attention or Choice("padded", "SDPA over padded, length-sorted batches")
        # A hub id lets sentence-transformers fetch the weights; model_info fetched only the configs.
        source = info.name if info.is_hub_id else str(info.path)
        log.info("loading %s on %s (%s)", info.name, self.device, self.dtype)
        transformers_logging.disable_progress_bar()
        self.model = SentenceTransformer(
            source, device=self.device, model_kwargs={"dtype": self.dtype, "attn_implementation": "sdpa"}
        )
        self.model.eval()
        if quantize != "none":
            self.model = quantization.apply(self.model, quantize, self.device)
        self.tokenizer = self.model.tokenizer
        self.max_length = self.model.max_seq_length

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        return encoded["input_ids"]

    def collate(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        features = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        if self.on_cuda:
            features = {name: tensor.pin_memory() for name, tensor in features.items()}
        return dict(features)

    @torch.inference_mode()
    def forward(self, batch: dict[str, torch.Tensor], dim: int) -> np.ndarray:
        try:
            on_device = {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}
            pooled = self.model.forward(on_device)["sentence_embedding"][:, :dim]
            return F.normalize(pooled.float(), dim=-1).cpu().numpy()
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(f"CUDA out of memory on a batch of {batch['input_ids'].shape}") from err

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            vectors = self.model.encode(
                texts,
                prompt=self.info.query_prompt or None,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def peak_memory_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.on_cuda else 0
