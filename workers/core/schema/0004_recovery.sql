-- Recovery without a human. When each chunk was queued and last sent, so that work whose task
-- was lost (broker restarted empty, worker killed, a crash between commit and send) is found and
-- sent again; what each worker holds and which messages it has taken from the broker; the outbox
-- of vector deletions Milvus must follow; and the folders documents were ingested from.

ALTER TABLE chunk_embeddings
    ADD COLUMN queued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN sent_at   TIMESTAMPTZ;

-- The tasks a worker has received and not finished (their chunks), and the send time of the
-- newest message it took from the broker: the broker hands messages out in the order they were
-- sent, so a chunk sent well before that and held by no live worker lost its task.
ALTER TABLE worker_heartbeats
    ADD COLUMN held_chunk_ids   TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN consumed_sent_at TIMESTAMPTZ;

-- Vectors to delete from every kept collection, written in the transaction that removed their
-- chunks (a changed, moved, pruned or withdrawn document), deleted once Milvus confirms.
CREATE TABLE milvus_outbox (
    id         BIGSERIAL PRIMARY KEY,
    chunk_ids  TEXT[] NOT NULL,
    reason     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

-- Folders given to `producer ingest`: a folder inside one of them keeps its documents' identities
-- (paths from the outer folder), and `--prune` removes only documents under the folder given and
-- ingested from the same place.
CREATE TABLE ingest_roots (
    path             TEXT PRIMARY KEY,
    last_ingested_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE documents ADD COLUMN ingest_root TEXT;
