-- The pending chunks by version *and id*: a claim looks its 32 ids up in it. Keyed on the version
-- alone, a claim during a backlog of a million walked the million (the planner takes the partial
-- index when its statistics, gathered before the backlog, say few chunks are pending).
DROP INDEX chunk_embeddings_pending;
CREATE INDEX chunk_embeddings_pending ON chunk_embeddings (index_version_id, chunk_id)
    WHERE embedded_at IS NULL AND failed_at IS NULL;

-- The chunks waiting longest, among the pending ones: the reconciler's search for lost work reads
-- those waiting since before its cutoff, in that order, instead of every pending chunk (a re-index
-- in progress has a million of them).
CREATE INDEX chunk_embeddings_waiting ON chunk_embeddings ((coalesce(sent_at, queued_at)))
    WHERE embedded_at IS NULL AND failed_at IS NULL;

-- Counts read on every call (`producer status`, the exporter, `migrate status`, an ingest's wait),
-- kept as the rows change: a count(*) over a million chunks reads them all, each time.
--
-- Every statement that inserts, deletes or changes the state of rows appends its net change, one
-- row per (subject, version); no row is updated in place, so that workers marking chunks at once
-- never wait on one hot counter. `fold_row_counts()` replaces the changes by their sums (the
-- reconciler, status and ingest call it); a count is the sum of its rows. The triggers run in the
-- writer's transaction: a count is exactly what a count(*) in the same snapshot would say.
CREATE TABLE row_counts (
    subject          TEXT NOT NULL CHECK (subject IN ('documents', 'chunks', 'embedded', 'pending', 'failed')),
    index_version_id INTEGER NOT NULL DEFAULT 0,  -- 0: documents and chunks
    delta            BIGINT NOT NULL
);
CREATE INDEX row_counts_subject ON row_counts (subject, index_version_id);

CREATE FUNCTION embedding_state(embedded_at TIMESTAMPTZ, failed_at TIMESTAMPTZ) RETURNS TEXT
IMMUTABLE LANGUAGE sql AS $$
    SELECT CASE WHEN embedded_at IS NOT NULL THEN 'embedded' WHEN failed_at IS NOT NULL THEN 'failed'
                ELSE 'pending' END
$$;

CREATE FUNCTION count_inserted_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_counts (subject, delta) SELECT TG_TABLE_NAME, count(*) FROM new_rows HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION count_deleted_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_counts (subject, delta) SELECT TG_TABLE_NAME, -count(*) FROM old_rows HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER documents_inserted AFTER INSERT ON documents
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_rows();
CREATE TRIGGER documents_deleted AFTER DELETE ON documents
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_rows();
CREATE TRIGGER chunks_inserted AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_rows();
CREATE TRIGGER chunks_deleted AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_rows();

CREATE FUNCTION count_embedding_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO row_counts (subject, index_version_id, delta)
        SELECT embedding_state(embedded_at, failed_at), index_version_id, count(*) FROM new_rows GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO row_counts (subject, index_version_id, delta)
        SELECT embedding_state(embedded_at, failed_at), index_version_id, -count(*) FROM old_rows GROUP BY 1, 2;
    ELSE
        INSERT INTO row_counts (subject, index_version_id, delta)
        SELECT state, version_id, sum(delta) FROM (
            SELECT embedding_state(embedded_at, failed_at) AS state, index_version_id AS version_id, 1 AS delta
            FROM new_rows
            UNION ALL
            SELECT embedding_state(embedded_at, failed_at), index_version_id, -1 FROM old_rows
        ) AS changes
        GROUP BY 1, 2 HAVING sum(delta) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER chunk_embeddings_inserted AFTER INSERT ON chunk_embeddings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_embedding_states();
CREATE TRIGGER chunk_embeddings_deleted AFTER DELETE ON chunk_embeddings
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_embedding_states();
CREATE TRIGGER chunk_embeddings_updated AFTER UPDATE ON chunk_embeddings
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION count_embedding_states();

-- The changes replaced by their sums. Changes committed meanwhile are not in this statement's
-- snapshot and stay; two folds at once each sum only the rows they deleted.
CREATE FUNCTION fold_row_counts() RETURNS void LANGUAGE sql AS $$
    WITH folded AS (DELETE FROM row_counts RETURNING subject, index_version_id, delta)
    INSERT INTO row_counts (subject, index_version_id, delta)
    SELECT subject, index_version_id, sum(delta) FROM folded GROUP BY 1, 2 HAVING sum(delta) <> 0
$$;

-- What is there now (the triggers, created above in this transaction, hold writers off until it
-- commits: nothing changes between these counts and the first change counted).
INSERT INTO row_counts (subject, delta) SELECT 'documents', count(*) FROM documents;
INSERT INTO row_counts (subject, delta) SELECT 'chunks', count(*) FROM chunks;
INSERT INTO row_counts (subject, index_version_id, delta)
SELECT embedding_state(embedded_at, failed_at), index_version_id, count(*) FROM chunk_embeddings GROUP BY 1, 2;
