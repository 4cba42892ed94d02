"""The common floor: standard library and numpy only, imported by every other part of tki-sdk.

It holds what every floor above shares and nothing that needs torch, onnxruntime, Pillow or usearch:

- :mod:`.errors`: exit statuses, the user-error types (:class:`~.errors.UsageError`, :class:`~.errors.ConfigError`), ``one_line(exc)``;
- :mod:`.index_config`: ``IndexConfig``, the HNSW defaults and the self-tuning target;
- :mod:`.atomic`: the one atomic writer (temporary file, fsync, rename, fsync of the folder) and ``sha256_file``;
- :mod:`.imagefolders`: the image suffix set, the one folder walker, the default dataset location;
- :mod:`.versions`: installed package versions for result and artifact records;
- :mod:`.contract`, :mod:`.checkpoint_config`, :mod:`.model_metadata`, :mod:`.artifacts`,
  :mod:`.gallery_manifest`: the on-disk contracts (``config.json``, ``tki.json``, ``gallery.json``).

See ARCHITECTURE.md for the floors and the rule that nothing here imports upward.
"""
