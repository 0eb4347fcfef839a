"""Names and schemas of the on-disk feature store (documented in docs/STORE_FORMAT.md).

```
<store>/
  deepfeat-store.json     metadata: model, weights hash, layers, pooling, preprocessing, dtype, fingerprint
  manifest.json           the committed parts (with manifest.log); readers trust only these files
  manifest.log            commit log: parts committed since manifest.json was last rewritten
  parts/<name>/           one committed, immutable part
      rows.parquet        one row per stored vector: id, view, label, split, path, path_bytes, sha256, ...
      <layer key>.npy     rows x dims, float16/float32 (int8 for ternary embeddings); absent when rows == 0
      ledger.parquet      the fate of every input the part covered: embedded | failed (+ reason, message)
  excluded.parquet        inputs excluded at discovery by the latest run (reason, message)
  .lock                   flock'ed by the one writer
  .tmp/                   parts being written; never read, removed at the next start
```
"""

from __future__ import annotations

import re

import pyarrow as pa

FORMAT_NAME = "deepfeat-store"
FORMAT_VERSION = 1
METADATA_FILE = "deepfeat-store.json"
MANIFEST_FILE = "manifest.json"
#: The commit log: one checksummed line per part committed since manifest.json was last rewritten.
COMMIT_LOG_FILE = "manifest.log"
PARTS_DIR = "parts"
TMP_DIR = ".tmp"
EXCLUDED_FILE = "excluded.parquet"
ROWS_FILE = "rows.parquet"
LEDGER_FILE = "ledger.parquet"

ROWS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("view", pa.int16()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("path", pa.string()),
        ("path_bytes", pa.binary()),
        ("sha256", pa.string()),
        ("format", pa.string()),
        ("mode", pa.string()),
        ("n_frames", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

LEDGER_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("path_bytes", pa.binary()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
    ]
)

STATUSES = ("embedded", "failed", "excluded")


def layer_key(name: str, taken: set[str] | None = None) -> str:
    """File-system-safe key for a layer name (``blocks.4`` -> ``blocks.4``; ``a/b`` -> ``a_b``)."""
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "layer"
    if taken is not None:
        base, i = key, 1
        while key in taken:
            i += 1
            key = f"{base}_{i}"
        taken.add(key)
    return key


def part_name(index: int) -> str:
    """Name of the part with sequence number ``index`` (zero-padded, sorts in order)."""
    return f"{index:08d}"


def display_path(path_bytes: bytes) -> str:
    """A printable form of a path; non-UTF-8 bytes become ``\\xNN`` escapes."""
    return path_bytes.decode("utf-8", "backslashreplace")
