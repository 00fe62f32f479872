"""Token counting with the embedding model's own tokenizer, without torch.

Counts include the special tokens the model reads (Qwen3 appends <|endoftext|>, BERT adds
[CLS] and [SEP]), so a chunk's count is exactly its share of the model's sequence limit.
"""

import re
from functools import cache

from tokenizers import Tokenizer

from workers.embedding.model_info import ModelInfo

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class TokenCounter:
    """Counts the tokens a model reads for a text and cuts over-long text at token boundaries."""

    def __init__(self, tokenizer: Tokenizer | None):
        self._tokenizer = tokenizer
        if tokenizer is not None:
            # Some tokenizer.json files carry a truncation or padding setting: counts must ignore it.
            tokenizer.no_truncation()
            tokenizer.no_padding()
        self.special_tokens = self.count([""])[0]

    def count(self, texts: list[str]) -> list[int]:
        """Tokens the model reads for each text, special tokens included."""
        if self._tokenizer is None:
            return [len(_WORD.findall(text)) + 1 for text in texts]
        return [len(enc.ids) for enc in self._tokenizer.encode_batch(texts, add_special_tokens=True)]

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens (word hashes for the word counter)."""
        if self._tokenizer is None:
            return [[hash(word) & 0xFFFF for word in _WORD.findall(text)] + [0] for text in texts]
        return [enc.ids for enc in self._tokenizer.encode_batch(texts, add_special_tokens=True)]

    def split(self, text: str, max_tokens: int) -> list[str]:
        """Cut `text` into pieces of at most `max_tokens` tokens (special tokens counted), at token edges."""
        room = max(1, max_tokens - self.special_tokens)
        if self._tokenizer is None:
            spans = [match.span() for match in _WORD.finditer(text)]
        else:
            spans = [span for span in self._tokenizer.encode(text, add_special_tokens=False).offsets]
        pieces = []
        for start in range(0, len(spans), room):
            window = spans[start : start + room]
            end = spans[start + room][0] if start + room < len(spans) else len(text)
            pieces.append(text[window[0][0] : end])
        return [piece for piece in pieces if piece.strip()]


@cache
def load_token_counter(info: ModelInfo) -> TokenCounter:
    """The token counter of `info`'s model (a word counter for the fake model)."""
    if info.tokenizer_file is None:
        return TokenCounter(None)
    return TokenCounter(Tokenizer.from_file(str(info.tokenizer_file)))
