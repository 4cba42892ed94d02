"""Embedding pipelines over the engine and the index: ingest (folder -> gallery), the ``tki embed`` job
(local, resumable, incremental), Parquet shards, and the Ray Data job (:mod:`.distributed`, the only module
that imports Ray)."""
