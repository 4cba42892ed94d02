"""The vector index (torch-free, image-free): ``Gallery`` (keys, add / remove / search, filters), its
versioned on-disk store, SQLite metadata, recall tuning and Poincaré re-ranking. It knows nothing of images:
building a gallery from a folder belongs to :mod:`tki_sdk.runtime.pipeline`."""
