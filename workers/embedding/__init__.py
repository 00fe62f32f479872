"""Encoders behind one interface: sentence-transformers for real models, a fake for tests.

`load_encoder` imports torch only when a real model is asked for.
"""

from workers.embedding.base import Encoder
from workers.embedding.model_info import ModelInfo, resolve_model


def load_encoder(model: str, device: str = "auto", attention: str = "auto") -> Encoder:
    """The encoder for `model` (hub id, local directory, `fake[:DIM]` or `null[:DIM][@TOKENS_PER_S]`).

    `attention`: "auto" gives Qwen3 embedding models the packed (varlen) forward on CUDA, "packed"
    everywhere, "padded" never.
    """
    info = resolve_model(model)
    if info.kind == "fake":
        from workers.embedding.fake import FakeEncoder

        return FakeEncoder(info)
    if info.kind == "null":
        from workers.embedding.simulated import SimulatedEncoder

        return SimulatedEncoder(info, tokens_per_s=info.simulated_tokens_per_s)
    from workers.embedding import qwen3_packed
    from workers.embedding.sentence_transformer import SentenceTransformerEncoder, pick_device

    # The packed path pays off with the varlen kernel on CUDA; on CPU it is a slower reference.
    packed = attention == "packed" or (attention == "auto" and pick_device(device).startswith("cuda"))
    if packed and qwen3_packed.supports(info):
        return qwen3_packed.PackedQwen3Encoder(info, device=device)
    return SentenceTransformerEncoder(info, device=device)


__all__ = ["Encoder", "ModelInfo", "load_encoder", "resolve_model"]
