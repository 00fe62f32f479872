"""Encoders behind one interface: sentence-transformers for real models, a fake for tests.

`load_encoder` imports torch only when a real model is asked for.
"""

import logging

from workers import metrics
from workers.core.errors import ConfigError
from workers.embedding.base import Encoder
from workers.embedding.model_info import ModelInfo, resolve_model

log = logging.getLogger(__name__)


def load_encoder(model: str, device: str = "auto", attention: str = "auto", quantize: str = "none") -> Encoder:
    """The encoder for `model` (hub id, local directory, `fake[:DIM]` or `null[:DIM][@TOKENS_PER_S]`).

    `attention` (FLEET_ATTENTION): "auto" gives a Qwen3 embedding model on CUDA the packed forward
    through the first packed kernel that works here (the probe says which, and why the others were
    passed over), padded SDPA otherwise; "packed" insists on a packed kernel (an error at start if
    none works); "padded" never packs. `quantize`: "none", "int8" (CPU) or "fp8" (GPU).
    """
    info = resolve_model(model)
    if info.kind == "fake":
        from workers.embedding.fake import FakeEncoder

        return FakeEncoder(info)
    if info.kind == "null":
        from workers.embedding.simulated import SimulatedEncoder

        return SimulatedEncoder(info, tokens_per_s=info.simulated_tokens_per_s)
    from workers.embedding import qwen3_packed
    from workers.embedding.sentence_transformer import SentenceTransformerEncoder, default_dtype, pick_device

    device = pick_device(device)
    choice = _attention(info, device, attention)
    metrics.ATTENTION_PATH.labels(choice.path, choice.reason).set(1)
    log.info("%s: %s", info.name, choice.describe())
    if choice.path == "padded":
        return SentenceTransformerEncoder(info, device=device, quantize=quantize, attention=choice)
    return qwen3_packed.PackedQwen3Encoder(
        info, device=device, dtype=default_dtype(device), choice=choice, quantize=quantize
    )


def _attention(info: ModelInfo, device: str, mode: str):
    """The attention path for this model on this device, and why."""
    from workers.embedding import qwen3_packed
    from workers.embedding.attention import Choice
    from workers.embedding.sentence_transformer import default_dtype

    if mode == "padded":
        return Choice("padded", "FLEET_ATTENTION=padded")
    if not qwen3_packed.supports(info):
        if mode == "packed":
            raise ConfigError(
                f"FLEET_ATTENTION=packed needs a Qwen3 embedding model (Transformer, last-token pooling); "
                f"{info.name} is not one: set FLEET_ATTENTION=auto or padded"
            )
        return Choice("padded", "not a Qwen3 last-token model: packing applies to Qwen3 only")
    if mode == "auto" and not device.startswith("cuda"):
        return Choice("padded", f"{device}: padded SDPA batches beat the packed kernels' fallbacks off CUDA")
    choice = qwen3_packed.probe_for(qwen3_packed.model_config(info), device, default_dtype(device))
    if choice.path == "padded" and mode == "packed":
        raise ConfigError(f"FLEET_ATTENTION=packed, but no packed attention kernel works here ({choice.describe()})")
    return choice


__all__ = ["Encoder", "ModelInfo", "load_encoder", "resolve_model"]
