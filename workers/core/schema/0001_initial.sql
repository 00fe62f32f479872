-- Documents, their chunks (the text is the source of truth), index versions, embedding
-- progress per version, and failures. Released migrations are frozen: add a new file instead.

CREATE TABLE documents (
    id             BIGSERIAL PRIMARY KEY,
    source_path    TEXT NOT NULL UNIQUE,
    content_sha256 TEXT NOT NULL,
    access_level   SMALLINT NOT NULL CHECK (access_level BETWEEN 0 AND 3),
    metadata       JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chunks (
    id          TEXT PRIMARY KEY,
    document_id BIGINT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal     INTEGER NOT NULL,
    text        TEXT NOT NULL,
    token_count INTEGER NOT NULL CHECK (token_count > 0),
    UNIQUE (document_id, ordinal) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE index_versions (
    id           SERIAL PRIMARY KEY,
    model        TEXT NOT NULL,
    dim          INTEGER NOT NULL CHECK (dim > 0),
    collection   TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL CHECK (state IN ('building', 'live', 'retired')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    activated_at TIMESTAMPTZ
);
-- At most one live version: the one the Milvus alias points at.
CREATE UNIQUE INDEX index_versions_one_live ON index_versions (state) WHERE state = 'live';

-- One row per (version, chunk) to embed; embedded_at is set once the vector is in Milvus.
CREATE TABLE chunk_embeddings (
    index_version_id INTEGER NOT NULL REFERENCES index_versions (id) ON DELETE CASCADE,
    chunk_id         TEXT NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
    attempts         INTEGER NOT NULL DEFAULT 0,
    embedded_at      TIMESTAMPTZ,
    failed_at        TIMESTAMPTZ,
    PRIMARY KEY (index_version_id, chunk_id)
);
CREATE INDEX chunk_embeddings_pending ON chunk_embeddings (index_version_id)
    WHERE embedded_at IS NULL AND failed_at IS NULL;
CREATE INDEX chunk_embeddings_done ON chunk_embeddings (index_version_id, embedded_at)
    WHERE embedded_at IS NOT NULL;

CREATE TABLE failures (
    id               BIGSERIAL PRIMARY KEY,
    index_version_id INTEGER REFERENCES index_versions (id) ON DELETE CASCADE,
    chunk_id         TEXT REFERENCES chunks (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    error            TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX failures_chunk ON failures (index_version_id, chunk_id);
