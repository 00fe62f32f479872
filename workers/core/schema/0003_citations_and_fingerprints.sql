-- Where each chunk comes from (PDF pages, the heading path) so that hits can be cited; and what
-- decided each document's chunks and level (its fingerprint) and where its level was declared.

ALTER TABLE documents
    ADD COLUMN fingerprint  TEXT,
    ADD COLUMN level_source TEXT;

ALTER TABLE chunks
    ADD COLUMN page_start INTEGER CHECK (page_start >= 1),
    ADD COLUMN page_end   INTEGER CHECK (page_end >= page_start),
    ADD COLUMN section    TEXT;
