"""YAML from untrusted files (front matter, sidecars, `.fleet.yaml`), with bounds.

PyYAML's safe loader still builds whatever the text describes: a 500-byte alias bomb expands to
gigabytes, a recursive alias to a structure that never ends, and a duplicate key silently keeps
the last value. Here the node graph is checked before anything is built: size, nesting, alias
expansion and cycles are bounded, duplicate keys refused, and values turned into what JSON (and
Postgres) can hold.
"""

import datetime
import math

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from workers.core.errors import InvalidInput

MAX_YAML_BYTES = 64 * 1024
# Nodes after expanding every alias: far above any real metadata, far below a bomb.
MAX_EXPANDED_NODES = 10_000
MAX_DEPTH = 32


class YamlRefused(InvalidInput):
    """YAML that is malformed or exceeds a bound; the message says which."""


def load_mapping(text: str, what: str) -> dict:
    """The YAML mapping in `text` ({} for an empty document), JSON-safe; `what` names it in errors."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise YamlRefused(f"{what} is larger than {MAX_YAML_BYTES // 1024} KB")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_graph(node, what)
        value = loader.construct_document(node)
    except yaml.YAMLError as err:
        raise YamlRefused(f"{what} is not valid YAML: {_one_line(err)}") from err
    finally:
        loader.dispose()
    if not isinstance(value, dict):
        raise YamlRefused(f"{what} must be a YAML mapping of keys to values, not a {type(value).__name__}")
    return json_safe(value, what)


def _check_graph(root: Node, what: str) -> None:
    """Refuse cycles, deep nesting, duplicate keys and alias expansion past the bound."""
    expanded: dict[int, int] = {}  # node id -> nodes it expands to (aliases share node objects)
    in_progress: set[int] = set()

    def size(node: Node, depth: int) -> int:
        if id(node) in expanded:
            return expanded[id(node)]
        if id(node) in in_progress:
            raise YamlRefused(f"{what} has a recursive alias")
        if depth > MAX_DEPTH:
            raise YamlRefused(f"{what} is nested deeper than {MAX_DEPTH} levels")
        in_progress.add(id(node))
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, MappingNode):
            _check_unique_keys(node, what)
            total += sum(size(key, depth + 1) + size(value, depth + 1) for key, value in node.value)
        in_progress.discard(id(node))
        if total > MAX_EXPANDED_NODES:
            raise YamlRefused(f"{what} expands to more than {MAX_EXPANDED_NODES} values (aliases)")
        expanded[id(node)] = total
        return total

    size(root, 0)


def _check_unique_keys(node: MappingNode, what: str) -> None:
    seen: set[str] = set()
    for key, _ in node.value:
        if isinstance(key, ScalarNode):
            if key.value in seen:
                raise YamlRefused(f"{what} has the key {key.value!r} twice: keep one")
            seen.add(key.value)


def json_safe(value: object, what: str) -> object:
    """`value` as JSON can hold it: dates and non-finite numbers become strings; NUL is refused."""
    if isinstance(value, dict):
        return {_text(str(key), what): json_safe(item, what) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(item, what) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    if isinstance(value, str):
        return _text(value, what)
    if isinstance(value, bytes):
        raise YamlRefused(f"{what} holds binary data (!!binary): metadata must be text")
    return _text(str(value), what)


def _text(value: str, what: str) -> str:
    if "\x00" in value:
        raise YamlRefused(f"{what} contains a NUL character")
    return value


def _one_line(err: yaml.YAMLError) -> str:
    return " ".join(str(err).split())
