"""Input side of deepfeat: one input's bytes and pixels (read, decode, preprocess, augment, the decode pool)."""

from deepfeat.data.decode import (
    FAILURE_REASONS,
    DecodedImage,
    DecodePolicy,
    decode_bytes,
    decode_file,
    decode_image,
    read_file_bytes,
)

__all__ = [
    "FAILURE_REASONS",
    "DecodedImage",
    "DecodePolicy",
    "decode_bytes",
    "decode_file",
    "decode_image",
    "read_file_bytes",
]
