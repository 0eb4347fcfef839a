"""What one stored feature set is: the contract between the runtimes that compute features and the
store that keeps them (no reading or writing here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerSpec:
    """One stored feature set: layer name, file key, per-sample shape, pooling and dims.

    Example:
        >>> LayerSpec.from_dict(LayerSpec("blocks.4", "blocks_4", (112,), "avg", 112).to_dict()).dims
        112
    """

    name: str
    key: str
    shape: tuple[int, ...]
    pool: str
    dims: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "shape": list(self.shape), "pool": self.pool, "dims": self.dims}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerSpec":
        return cls(d["name"], d["key"], tuple(d["shape"]), d["pool"], int(d["dims"]))
