-- Every search the query service answers, for audit ("who searched for what, at which level, and
-- which documents did they get?") and for feedback: written in batches off the request path
-- (FLEET_SEARCH_LOG: full, hashed, off), deleted after FLEET_SEARCH_LOG_DAYS. Key events (created,
-- revoked) and refused requests (401, 403, 429) beside them. Nothing here is served over HTTP.
-- No foreign keys to index versions or keys: the record outlives a dropped version or a key.
CREATE TABLE searches (
    id            UUID PRIMARY KEY,
    key_name      TEXT NOT NULL,
    access_level  SMALLINT NOT NULL CHECK (access_level BETWEEN 0 AND 3),
    index_name    TEXT NOT NULL,
    mode          TEXT NOT NULL,
    query         TEXT,           -- FLEET_SEARCH_LOG=full
    query_hash    TEXT,           -- FLEET_SEARCH_LOG=hashed: HMAC-SHA256 with FLEET_SEARCH_LOG_KEY
    top_k         INTEGER NOT NULL,
    latency_ms    REAL NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX searches_created ON searches (created_at);
CREATE INDEX searches_key ON searches (key_name, created_at);

CREATE TABLE search_hits (
    search_id     UUID NOT NULL REFERENCES searches (id) ON DELETE CASCADE,
    rank          SMALLINT NOT NULL,
    chunk_id      TEXT NOT NULL,
    source_path   TEXT NOT NULL,
    access_level  SMALLINT NOT NULL,
    PRIMARY KEY (search_id, rank)
);
CREATE INDEX search_hits_document ON search_hits (source_path);

CREATE TABLE audit_events (
    id            BIGSERIAL PRIMARY KEY,
    kind          TEXT NOT NULL,  -- key_created, key_revoked, refused
    key_name      TEXT,
    status        INTEGER,
    detail        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_created ON audit_events (created_at);
