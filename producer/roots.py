"""Which ingested folder a path belongs to.

A document's identity is its path inside the folder it was ingested from. A folder inside one
already ingested (`ingest docs/hr` after `ingest docs`) keeps that folder's identities
(`hr/leave.md`, not `leave.md`) and the `.fleet.yaml` rules above it, and `--prune` then removes
only documents under `docs/hr` — never the rest of `docs`, nor documents ingested from elsewhere.
"""

from dataclasses import dataclass
from pathlib import Path

import psycopg


@dataclass(frozen=True)
class IngestRoot:
    base: Path  # the folder identities are relative to
    path: Path  # the folder being ingested: `base` or a folder inside it
    prefix: str  # identity of `path` inside `base`: "" or "hr/"

    @property
    def key(self) -> str:
        return str(self.base)


def resolve(conn: psycopg.Connection, folder: Path) -> IngestRoot:
    """The root `folder` belongs to: the outermost ingested folder that holds it, else itself."""
    path = folder.resolve()
    known = [Path(known) for (known,) in conn.execute("SELECT path FROM ingest_roots")]
    holding = [root for root in known if root == path or root in path.parents]
    base = min(holding, key=lambda root: len(root.parts)) if holding else path
    prefix = "" if base == path else path.relative_to(base).as_posix() + "/"
    return IngestRoot(base, path, prefix)


def record(conn: psycopg.Connection, root: IngestRoot) -> None:
    """Remember `root.base`; known roots inside it are now part of it."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO ingest_roots (path) VALUES (%s) ON CONFLICT (path) DO UPDATE SET last_ingested_at = now()",
            (root.key,),
        )
        conn.execute("DELETE FROM ingest_roots WHERE starts_with(path, %s)", (root.key.rstrip("/") + "/",))


def prunable(conn: psycopg.Connection, root: IngestRoot, seen: set[str], unreadable: list[str]) -> list[str]:
    """Documents of this root under the ingested folder that were not seen, nor under one of the
    `unreadable` folders (identity prefixes): what `--prune` removes."""
    rows = conn.execute(
        "SELECT source_path FROM documents WHERE (ingest_root = %s OR ingest_root IS NULL)"
        " AND starts_with(source_path, %s) ORDER BY source_path",
        (root.key, root.prefix),
    ).fetchall()
    keep = tuple(unreadable)
    return [path for (path,) in rows if path not in seen and not (keep and path.startswith(keep))]
