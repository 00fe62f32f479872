"""Attention over a packed batch (sequences concatenated), from the kernels this torch has.

The packed Qwen3 forward needs causal attention that stays inside each sequence. Three kernels
can do it, depending on the torch release and the device:

- `varlen`: `torch.nn.attention.varlen.varlen_attn` (FlashAttention varlen; CUDA, half precision).
  Its signature changed between releases — `is_causal` (2.10), then `window_size`; `enable_gqa` and
  `num_splits` later — so it is called through the parameters it has: KV heads are expanded by
  hand where `enable_gqa` is missing, and `num_splits=1` (where it exists) keeps a chunk's vector
  the same whatever batch it is in.
- `flex`: FlexAttention with a block mask by sequence (compiled on CUDA; eager elsewhere: correct
  but slow).
- `nested`: SDPA on jagged nested tensors.

`probe` runs each on tiny random inputs and compares it with per-sequence SDPA (the reference);
the first that matches is used (between `flex` and `nested` the faster one). Each kernel that is
passed over keeps its reason. A kernel that fails later, on a real batch, is passed over from then
on, and that batch is attended by the next one: a kernel error never fails a batch.
"""

import inspect
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PACKED_KERNELS = ("varlen", "flex", "nested")
# Largest difference from the reference the probe accepts (half precision on GPU rounds more).
_TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
_PROBE_LENGTHS = (5, 17, 3, 11)
# Tokens eager FlexAttention attends at once: its scores take window² × heads × 4 bytes.
EAGER_WINDOW = 2048


@dataclass(frozen=True)
class Packing:
    """Where each sequence of a packed batch lies: tokens cu_seqlens[i]:cu_seqlens[i+1]."""

    cu_seqlens: torch.Tensor  # (N+1,) int32 on the device
    max_len: int
    bounds: list[int]  # cu_seqlens on the host


# q: (T, heads, head_dim); k, v: (T, kv_heads, head_dim) -> (T, heads, head_dim)
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Packing, float], torch.Tensor]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float) -> torch.Tensor:
    """Causal GQA SDPA on each sequence's slice: exact, one call per sequence."""
    outputs = []
    for start, end in pairwise(packing.bounds):
        q_s, k_s, v_s = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q_s, k_s, v_s, is_causal=True, scale=scale, enable_gqa=True)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def varlen_kernel(varlen_attn: Callable) -> Kernel:
    """varlen_attn called through the parameters this release has."""
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params and "is_causal" not in params:
        raise NotImplementedError("this varlen_attn has neither window_size nor is_causal: no causal attention")

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float) -> torch.Tensor:
        options: dict = {}
        if "window_size" in params:
            options["window_size"] = (-1, 0)  # causal; it must be a tuple
        else:
            options["is_causal"] = True
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        elif k.shape[1] != q.shape[1]:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if "num_splits" in params:
            options["num_splits"] = 1  # one split: a chunk's vector does not depend on its batch
        if "scale" in params:
            options["scale"] = scale
        elif abs(scale - q.shape[-1] ** -0.5) > 1e-9:
            q = q * (scale * q.shape[-1] ** 0.5)
        cu, longest = packing.cu_seqlens, packing.max_len
        return varlen_attn(q, k, v, cu, cu, longest, longest, **options)

    return attend


def flex_kernel(compiled: bool) -> Kernel:
    """FlexAttention with a block mask by sequence. Eager (not compiled) it materialises the scores,
    so it attends windows of whole sequences of at most EAGER_WINDOW tokens at a time."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    run = torch.compile(flex_attention, dynamic=True) if compiled else flex_attention
    if not compiled:  # known and chosen: windows keep it bounded
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    masks: dict = {}  # the masks of the packing being attended: every layer reuses them

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float) -> torch.Tensor:
        if masks.get("packing") is not packing:
            windows = [(packing.bounds[0], packing.bounds[-1])] if compiled else _windows(packing.bounds)
            masks.clear()
            masks.update(packing=packing, windows=[(a, b, _sequence_mask(packing, a, b, q.device)) for a, b in windows])
        outputs = []
        for start, end, mask in masks["windows"]:
            q_w, k_w, v_w = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
            out = run(q_w, k_w, v_w, block_mask=mask, scale=scale, enable_gqa=True)
            outputs.append(out[0].transpose(0, 1))
        return torch.cat(outputs)

    def _sequence_mask(packing: Packing, start: int, end: int, device: torch.device):
        bounds = [b - start for b in packing.bounds if start <= b <= end]
        lengths = torch.tensor([b - a for a, b in pairwise(bounds)], device=device)
        sequence = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)

        def same_sequence_causal(batch, head, q_index, k_index):
            return (sequence[q_index] == sequence[k_index]) & (q_index >= k_index)

        return create_block_mask(same_sequence_causal, None, None, end - start, end - start, device=device)

    return attend


def _windows(bounds: list[int]) -> list[tuple[int, int]]:
    """Runs of whole sequences of at most EAGER_WINDOW tokens (a longer sequence alone)."""
    windows, start = [], bounds[0]
    for previous, end in pairwise(bounds):
        if end - start > EAGER_WINDOW and previous > start:
            windows.append((start, previous))
            start = previous
    windows.append((start, bounds[-1]))
    return windows


def nested_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float) -> torch.Tensor:
    offsets = packing.cu_seqlens.long()
    if k.shape[1] != q.shape[1]:  # the fused nested kernels want as many KV heads as query heads
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    # Nested tensors cannot be made from inference tensors inside inference mode.
    with torch.inference_mode(False), torch.no_grad():
        nq, nk, nv = (torch.nested.nested_tensor_from_jagged(t.clone(), offsets).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(nq, nk, nv, is_causal=True, scale=scale)
        return out.transpose(1, 2).values()


@dataclass
class Choice:
    """The attention path used and why; the paths passed over and why."""

    path: str  # a packed kernel's name, or "padded"
    reason: str
    passed_over: dict[str, str] = field(default_factory=dict)
    kernels: list[tuple[str, Kernel]] = field(default_factory=list)  # the ones that work, best first

    def describe(self) -> str:
        others = "; ".join(f"{name}: {why}" for name, why in self.passed_over.items())
        return f"attention: {self.path} ({self.reason})" + (f"; passed over {others}" if others else "")


def candidates(device: str) -> list[tuple[str, Callable[[], Kernel]]]:
    """The packed kernels to try on `device`, best first, each built lazily (an import may fail)."""

    def varlen() -> Kernel:
        if not device.startswith("cuda"):
            raise NotImplementedError("FlashAttention varlen runs on CUDA only")
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError as err:
            raise NotImplementedError(f"torch {torch.__version__} has no torch.nn.attention.varlen") from err
        return varlen_kernel(varlen_attn)

    def flex() -> Kernel:
        return flex_kernel(compiled=device.startswith("cuda"))

    return [("varlen", varlen), ("flex", flex), ("nested", lambda: nested_kernel)]


def probe(
    device: str, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, allowed: tuple[str, ...] = PACKED_KERNELS
) -> Choice:
    """Try each packed kernel on tiny random inputs against the reference; the first that matches is
    chosen (between flex and nested, the faster). With none, the choice is "padded"."""
    generator = torch.Generator().manual_seed(0)
    total = sum(_PROBE_LENGTHS)
    q = torch.randn(total, heads, head_dim, generator=generator).to(device, dtype)
    k = torch.randn(total, kv_heads, head_dim, generator=generator).to(device, dtype)
    v = torch.randn(total, kv_heads, head_dim, generator=generator).to(device, dtype)
    packing = make_packing(list(_PROBE_LENGTHS), device)
    scale = head_dim**-0.5
    expected = reference(q.float(), k.float(), v.float(), packing, scale)
    choice = Choice("padded", "no packed kernel matched per-sequence SDPA")
    timings: dict[str, float] = {}
    for name, build in candidates(device):
        if name not in allowed:
            choice.passed_over[name] = "not allowed here"
            continue
        try:
            kernel = build()
            with torch.inference_mode():
                got = kernel(q, k, v, packing, scale)
                error = (got.float() - expected).abs().max().item()
                if error > _TOLERANCE.get(dtype, 1e-2):
                    raise ValueError(f"differs from per-sequence SDPA by {error:.2e}")
                timings[name] = _time(kernel, q, k, v, packing, scale)
        except Exception as err:  # any failure passes the kernel over, with its reason
            choice.passed_over[name] = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
            continue
        choice.kernels.append((name, kernel))
    if choice.kernels:
        # varlen first when it works; otherwise the faster of the others.
        choice.kernels.sort(key=lambda item: (item[0] != "varlen", timings[item[0]]))
        choice.path = choice.kernels[0][0]
        choice.reason = f"matches per-sequence SDPA; {timings[choice.path] * 1e3:.2f} ms on the probe batch"
        for name, _ in choice.kernels[1:]:
            choice.passed_over[name] = f"works, kept as fallback ({timings[name] * 1e3:.2f} ms on the probe batch)"
    return choice


def make_packing(lengths: list[int], device: str) -> Packing:
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=device)
    return Packing(cu_seqlens, max(lengths), bounds)


def _time(kernel: Kernel, *args) -> float:
    if args[0].is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    kernel(*args)
    if args[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started
