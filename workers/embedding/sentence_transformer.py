"""sentence-transformers encoder: the model's own pooling, normalisation and prompts.

bf16 with SDPA attention on CUDA, fp32 elsewhere. Qwen3-Embedding's config gives last-token
pooling and left padding; sentence-transformers honours both.
"""

import logging

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as transformers_logging

from workers.embedding.base import Encoder
from workers.embedding.model_info import ModelInfo

log = logging.getLogger(__name__)


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
    def __init__(self, info: ModelInfo, device: str = "auto"):
        super().__init__(info)
        self.device = pick_device(device)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        # A hub id lets sentence-transformers fetch the weights; model_info fetched only the configs.
        source = info.name if info.is_hub_id else str(info.path)
        log.info("loading %s on %s (%s)", info.name, self.device, dtype)
        transformers_logging.disable_progress_bar()
        self.model = SentenceTransformer(
            source, device=self.device, model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"}
        )
        self.model.eval()

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, prompt=None)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, prompt=self.info.query_prompt or None)

    @torch.inference_mode()
    def _encode(self, texts: list[str], prompt: str | None) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            prompt=prompt,
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
