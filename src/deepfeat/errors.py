"""Exception types shared by every part of deepfeat.

Three families, kept apart on purpose (see docs/RELIABILITY in the project docs):

* :class:`InputError` -- one input item is bad (corrupt image, unsupported format...). It is
  recorded in the store's ledger with a ``reason`` class and the run goes on.
* :class:`EnvironmentFault` -- the machine is at fault (disk full, I/O error, lock held).
  It is never recorded against an image; the run stops loudly and a resume retries the items.
* :class:`UsageError` -- the user asked for something impossible (unknown layer, bad option).
  The CLI prints the message without a traceback and exits with status 2.
"""

from __future__ import annotations


class DeepfeatError(Exception):
    """Base class of every error deepfeat raises on purpose."""


class UsageError(DeepfeatError, ValueError):
    """A bad argument or an impossible request; the message says how to fix it."""


class InputError(DeepfeatError):
    """One input item could not be used. ``reason`` is a short machine-readable class."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class EnvironmentFault(DeepfeatError):
    """The environment failed (disk full, I/O error, lost lock); never an input's fault."""


class StoreError(DeepfeatError):
    """A feature store is missing, locked, corrupt or incompatible with the request."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


class ConfigMismatchError(StoreError):
    """Resuming a store with a different configuration than the one that created it."""


class WeightsUnavailableError(UsageError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


class BundleError(StoreError):
    """A model bundle is damaged, inconsistent or names something it must not (exit status 3)."""
