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
