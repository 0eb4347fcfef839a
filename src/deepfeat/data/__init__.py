"""Input side of deepfeat: discovery of sources and the one decode policy."""
from deepfeat.data.decode import (
    FAILURE_REASONS,
    DecodedImage,
    DecodePolicy,
    decode_bytes,
    decode_file,
    decode_image,
    read_file_bytes,
)
from deepfeat.data.sources import (
    EXCLUSION_REASONS,
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    Discovery,
    ExcludedItem,
    SourceItem,
    discover,
)

__all__ = [
    "FAILURE_REASONS",
    "DecodedImage",
    "DecodePolicy",
    "decode_bytes",
    "decode_file",
    "decode_image",
    "read_file_bytes",
    "EXCLUSION_REASONS",
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "Discovery",
    "ExcludedItem",
    "SourceItem",
    "discover",
]
