"""Quantised inference: a smaller, faster model from the same weights.

- `int8`: dynamic int8 linear layers (weights int8, activations quantised on the fly), for CPU
  workers: torch's own `quantize_dynamic`.
- `fp8`: float8 weights and activations for the linear layers, on GPUs with FP8 tensor cores
  (compute capability 8.9+: Ada, Hopper), through torchao.

Quantised vectors are close to the full-precision ones but not the same: a quantised model is a
new index version (`migrate reindex --quantize int8`, gated by `--eval`), never mixed with another.
"""

import logging

import torch
from torch import nn

from workers.core.constants import QUANTIZE_MODES
from workers.core.errors import ConfigError

log = logging.getLogger(__name__)


def check(mode: str, device: str) -> None:
    """Refuse a mode this device cannot run, with what to do instead."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantization {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    if mode == "int8" and device.startswith("cuda"):
        raise ConfigError("int8 (dynamic) quantization runs on CPU workers: on a GPU use fp8, or none")
    if mode == "fp8":
        if not device.startswith("cuda") or torch.cuda.get_device_capability(device) < (8, 9):
            raise ConfigError("fp8 needs a GPU with FP8 tensor cores (compute capability 8.9+: Ada, Hopper)")
        try:
            import torchao  # noqa: F401
        except ImportError as err:
            raise ConfigError("fp8 needs the torchao package in the worker image: pip install torchao") from err


def apply(model: nn.Module, mode: str, device: str) -> nn.Module:
    """`model` with its linear layers quantised (in place where the library works so)."""
    check(mode, device)
    if mode == "int8":
        log.info("quantising linear layers to dynamic int8")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    if mode == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

        log.info("quantising linear layers to float8")
        quantize_(model, Float8DynamicActivationFloat8WeightConfig())
    return model
