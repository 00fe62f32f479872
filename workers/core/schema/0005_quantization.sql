-- A quantised model gives other vectors than the same model in full precision: each index version
-- records the quantisation it was built with (`migrate reindex --quantize`), and its queries use it.

ALTER TABLE index_versions
    ADD COLUMN quantize TEXT NOT NULL DEFAULT 'none' CHECK (quantize IN ('none', 'int8', 'fp8'));
