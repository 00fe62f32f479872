"""The two stores: Postgres (the truth) and Milvus (vectors, rebuildable from Postgres)."""
