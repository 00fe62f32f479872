-- What the people who search say about a hit (POST /v1/feedback): one verdict per search and
-- chunk (a second one replaces the first), kept as long as its search (FLEET_SEARCH_LOG_DAYS).
-- `migrate finetune --from-feedback` trains on it; `migrate status` shows each version's useful rate.
CREATE TABLE search_feedback (
    search_id   UUID NOT NULL REFERENCES searches (id) ON DELETE CASCADE,
    chunk_id    TEXT NOT NULL,
    relevant    BOOLEAN NOT NULL,
    note        TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (search_id, chunk_id)
);

-- Limits per key: a token bucket (requests per second, burst), and an end of life. NULL: the
-- defaults of the service (FLEET_API_RATE_PER_KEY, FLEET_API_BURST_PER_KEY), and no expiry.
ALTER TABLE api_keys
    ADD COLUMN rate_per_s REAL CHECK (rate_per_s > 0),
    ADD COLUMN burst      INTEGER CHECK (burst >= 1),
    ADD COLUMN expires_at TIMESTAMPTZ;

-- Identical refusals (same kind, key, status and reason) between two writes of the service are
-- one row with their count: a flood of refused requests costs rows by reason, not by request.
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1);

-- `producer eval --push-metrics`: each run's figures, exported by `producer serve-metrics` as
-- fleet_eval_mrr / fleet_eval_hit_at_5 (the latest per index and mode) for the alert rules.
CREATE TABLE eval_results (
    id          BIGSERIAL PRIMARY KEY,
    index_name  TEXT NOT NULL,
    mode        TEXT NOT NULL,
    queries     INTEGER NOT NULL CHECK (queries > 0),
    mrr         DOUBLE PRECISION NOT NULL,
    hit_at_5    DOUBLE PRECISION NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX eval_results_latest ON eval_results (index_name, mode, created_at DESC);
