-- A canary: a version still being built (dual-written like any) that `producer serve` already
-- answers a share of the searches from, each API key always from the same version, until
-- `migrate promote` cuts over to it or `migrate rollback` / `migrate abort` ends it. One at a time.
ALTER TABLE index_versions
    ADD COLUMN canary_percent REAL CHECK (canary_percent > 0 AND canary_percent <= 100);
ALTER TABLE index_versions
    ADD CONSTRAINT index_versions_canary_is_building CHECK (canary_percent IS NULL OR state = 'building');
CREATE UNIQUE INDEX index_versions_one_canary ON index_versions ((true)) WHERE canary_percent IS NOT NULL;

-- What each version answered, counted by every query-service replica (batched, off the request
-- path): the figures `migrate status` compares a canary with the live version by.
CREATE TABLE version_search_stats (
    index_version_id INTEGER PRIMARY KEY REFERENCES index_versions (id) ON DELETE CASCADE,
    searches         BIGINT NOT NULL DEFAULT 0,
    empty            BIGINT NOT NULL DEFAULT 0,
    hits             BIGINT NOT NULL DEFAULT 0,
    seconds          DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
