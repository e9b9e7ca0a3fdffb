"""The bus's error tree. redis-py exceptions are translated at the boundary."""

from __future__ import annotations


class HiscrmError(Exception):
    """Base of every error hiscrm raises on purpose."""


class ConfigurationError(HiscrmError):
    """A setting is wrong (bad Redis URL, bad option value)."""


class Unavailable(HiscrmError):
    """Something the process depends on is down for now and comes back by itself
    (Redis, the database): a loop waits it out, nothing is acknowledged meanwhile."""


class BusUnavailable(Unavailable):
    """Redis cannot be reached or answered with a connection error."""


class AccountNotFound(HiscrmError):
    """The account id names no account."""


class AccountExists(HiscrmError):
    """An account with this id exists already."""


class InvalidAccountConfig(HiscrmError):
    """Values that do not validate as an account configuration. Nothing was written."""


class VersionConflict(HiscrmError):
    """A conditional update found the account changed by someone else. Nothing was written."""


class NotOwner(HiscrmError):
    """A worker spoke about an account it does not own at that moment. Nothing was written."""


class WorkerIdInUse(HiscrmError):
    """Another live process runs as this worker id."""
