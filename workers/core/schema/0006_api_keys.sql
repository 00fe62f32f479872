-- API keys of the query service (`producer serve`), each carrying an access level. Only the
-- SHA-256 of a key is kept: the key itself is printed once, by `producer keys create`. The prefix
-- (the key's first characters) tells an operator which key a leaked one is without revealing it.
-- A revoked key stays as a record; its name can be given to a new key.

CREATE TABLE api_keys (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    prefix       TEXT NOT NULL,
    key_sha256   TEXT NOT NULL UNIQUE CHECK (key_sha256 ~ '^[0-9a-f]{64}$'),
    access_level SMALLINT NOT NULL CHECK (access_level BETWEEN 0 AND 3),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
-- One active key per name.
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
-- The service finds a presented key by its prefix, then compares hashes in constant time.
CREATE INDEX api_keys_active_prefix ON api_keys (prefix) WHERE revoked_at IS NULL;
