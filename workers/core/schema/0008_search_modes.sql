-- Keyword and hybrid search: a version whose collection holds the chunk text, analysed, with a
-- BM25 sparse field that Milvus computes at insert, records the analyser here. NULL: the
-- collection holds vectors only (built before this), searched dense; `migrate reindex
-- --same-model` builds one with the text from it and from Postgres.
ALTER TABLE index_versions ADD COLUMN analyzer TEXT;
