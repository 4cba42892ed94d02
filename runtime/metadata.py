"""``tki.json`` for runtime users: the contract itself lives in :mod:`tki_sdk.common.model_metadata`."""
from tki_sdk.common.model_metadata import (
    FORMAT_VERSION,
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAME,
    ModelMetadata,
    PreprocessConfig,
    sha256_file,
)

__all__ = ["ModelMetadata", "PreprocessConfig", "sha256_file", "METADATA_FILE", "INPUT_NAME", "OUTPUT_NAME",
           "FORMAT_VERSION"]
