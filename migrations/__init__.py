"""`migrate`: apply the schema to a server (`migrate db`) and move the vectors between index
versions (blue-green re-index, verify and repair)."""
