"""Embedding pipelines over the engine and the index: ingest (folder -> gallery), the ``tki embed`` job
(local, resumable, incremental), Parquet shards, and the Ray Data job (:mod:`.distributed`, the only module
that imports Ray).

The one call that runs ``tki embed``: :func:`tki_sdk.runtime.pipeline.job.embed_folder` with an
:class:`tki_sdk.runtime.pipeline.config.EmbedConfig`; it returns a
:class:`tki_sdk.runtime.pipeline.embed_run.JobReport`."""
