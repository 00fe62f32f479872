"""Chunk bounds with the real Qwen tokenizer (from the stand-in) on Vietnamese and English."""

import re

import pytest

from producer.chunking import ChunkLimits, chunk_text
from producer.ingest import chunk_limits
from tests.textgen import document, run_on
from workers.core.settings import FleetSettings
from workers.embedding.model_info import resolve_model
from workers.embedding.tokenizer import load_token_counter

LIMITS = ChunkLimits(500, 1000)


@pytest.fixture(scope="module")
def qwen_counter(qwen_tiny):
    return load_token_counter(resolve_model(qwen_tiny))


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@pytest.mark.parametrize("language", ["vi", "en"])
@pytest.mark.parametrize("paragraphs", [12, 40, 101])
def test_chunks_stay_within_bounds_and_keep_every_word(qwen_counter, language, paragraphs):
    text = document(language, paragraphs, seed=paragraphs)
    chunks = chunk_text(text, qwen_counter, LIMITS)
    assert len(chunks) > 1
    counts = qwen_counter.count([chunk.text for chunk in chunks])
    assert [chunk.token_count for chunk in chunks] == counts
    assert all(LIMITS.min_tokens <= count <= LIMITS.max_tokens for count in counts), counts
    assert words(" ".join(chunk.text for chunk in chunks)) == words(text)


def test_chunks_end_at_paragraph_boundaries_when_they_can(qwen_counter):
    text = document("en", 60, seed=7)
    paragraphs = {p.strip() for p in text.split("\n\n")}
    chunks = chunk_text(text, qwen_counter, LIMITS)
    for chunk in chunks:
        assert chunk.text.split("\n\n")[-1].strip() in paragraphs


def test_short_document_is_one_chunk(qwen_counter):
    text = document("vi", 3, seed=1)
    (chunk,) = chunk_text(text, qwen_counter, LIMITS)
    assert chunk.text == text.strip()
    assert chunk.token_count < LIMITS.min_tokens


@pytest.mark.parametrize("language", ["vi", "en"])
def test_text_without_sentence_ends_is_cut_at_token_windows(qwen_counter, language):
    text = run_on(language, 3000, seed=3)
    chunks = chunk_text(text, qwen_counter, LIMITS)
    counts = qwen_counter.count([chunk.text for chunk in chunks])
    assert len(chunks) >= 3
    assert max(counts) <= LIMITS.max_tokens
    assert words(" ".join(chunk.text for chunk in chunks)) == words(text)


def test_model_with_a_shorter_window_gets_smaller_chunks_and_a_warning(minilm):
    info = resolve_model(minilm)
    limits, warning = chunk_limits(FleetSettings(_env_file=None), info)
    assert limits.max_tokens == 256
    assert "reads at most 256 tokens" in warning
    counter = load_token_counter(info)
    chunks = chunk_text(document("en", 30, seed=2), counter, limits)
    assert max(counter.count([c.text for c in chunks])) <= 256


def test_empty_text_has_no_chunks(qwen_counter):
    assert chunk_text("  \n\n ", qwen_counter, LIMITS) == []
