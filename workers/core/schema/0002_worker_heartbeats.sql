-- What each worker holds and when it last made progress: `producer status` reports a worker
-- that holds work but made no progress for FLEET_STUCK_AFTER_S as stuck.

CREATE TABLE worker_heartbeats (
    name             TEXT PRIMARY KEY,
    pid              INTEGER NOT NULL,
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_progress_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    chunks_held      INTEGER NOT NULL DEFAULT 0,
    chunks_done      BIGINT NOT NULL DEFAULT 0
);
