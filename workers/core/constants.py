"""Names shared by the producer and the workers, kept in one place."""

# Milvus alias through which search reaches the live index version.
LIVE_ALIAS = "chunks"
# Prefix of the per-version Milvus collections: chunks_v1, chunks_v2, ...
COLLECTION_PREFIX = "chunks_v"

# Celery
EMBED_TASK = "fleet.embed"
EMBED_QUEUE = "embed"

# Quantised inference of an index version's model (FLEET_QUANTIZE, `migrate reindex --quantize`;
# workers/schema/0005_quantization.sql checks the same names).
QUANTIZE_MODES = ("none", "int8", "fp8")

# Index version states (see workers/schema/0001_initial.sql)
STATE_BUILDING = "building"
STATE_LIVE = "live"
STATE_RETIRED = "retired"

# Milvus keeps upserts well under its 64 MB RPC cap at this many 1024-d rows.
MILVUS_UPSERT_ROWS = 2000

# Embedding rate (status, ETA, exporter) is measured over this many recent seconds.
RATE_WINDOW_S = 120

# Hits one search may return (Milvus allows 16,384; no reader needs this many).
MAX_TOP_K = 1000

# Search modes (`producer search --mode`, /v1/search's `mode`): the query's vector, BM25 on the
# chunk text, or both fused by rank (RRF, k = RRF_K).
DENSE, KEYWORD, HYBRID = "dense", "keyword", "hybrid"
SEARCH_MODES = (DENSE, KEYWORD, HYBRID)
RRF_K = 60
# Milvus's analyser of the chunk text in a new index version (recorded in index_versions): Unicode
# word boundaries and lower case, which suits Vietnamese (syllables are words) and English alike.
ANALYZER = "standard"
