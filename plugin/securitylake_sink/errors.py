"""The one exception tree of securitylake-sink.

SinkError
├── ConfigError            a config file or option breaks a rule (names the dotted option)
├── ProtocolError          bad bytes from a shipper; closes that one connection
│   └── FrameTooLarge      a frame above the size cap (no boundary left to resync on)
├── SpoolError             the write-ahead log or a batch file cannot be written or read
│   ├── SpoolCorrupt       a checksum or framing mismatch found on disk
│   └── SpoolLocked        another process holds the spool directory
├── Backpressure           the sink is full for now; the shipper should retry after a pause
├── MappingError           a record cannot become a valid OCSF event (goes to dead letters)
├── SchemaError            the bundled OCSF schema lacks a version, class or attribute
└── DeliveryError          an object could not be stored
    ├── RetriableDelivery  try again later (timeouts, 5xx, throttling)
    └── PermanentDelivery  will not heal by retrying (access denied, no such bucket)
"""

from __future__ import annotations

__all__ = [
    "Backpressure",
    "ConfigError",
    "ConfigIssue",
    "DeliveryError",
    "FrameTooLarge",
    "MappingError",
    "PermanentDelivery",
    "ProtocolError",
    "RetriableDelivery",
    "SchemaError",
    "SinkError",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolLocked",
]

from dataclasses import dataclass


class SinkError(Exception):
    """Base of every error this package raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One broken rule: the dotted option and what is wrong with it."""

    option: str
    message: str

    def __str__(self) -> str:
        return f"{self.option}: {self.message}" if self.option else self.message


class ConfigError(SinkError):
    """The configuration breaks one or more rules; each issue names its option."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue | str, option: str = "") -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(option, issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("; ".join(str(i) for i in self.issues))


class ProtocolError(SinkError):
    """Input from a shipper that does not follow its protocol."""


class FrameTooLarge(ProtocolError):
    """A frame above the configured cap; the connection cannot resynchronise."""


class SpoolError(SinkError):
    """The spool cannot write or read its files."""


class SpoolCorrupt(SpoolError):
    """Bytes on disk fail their checksum or framing."""


class SpoolLocked(SpoolError):
    """Another process holds the spool directory's lock."""


class Backpressure(SinkError):
    """The sink cannot take more now (e.g. the spool at its disk limit); retry after a pause.

    Sources answer HTTP 503 with ``Retry-After: retry_after_secs`` (pipeline-protocols §6.3).
    """

    def __init__(self, message: str, retry_after_secs: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_secs = retry_after_secs


class MappingError(SinkError):
    """A record cannot be turned into a valid OCSF event."""


class SchemaError(SinkError):
    """The bundled OCSF schema has no such version, class or attribute."""


class DeliveryError(SinkError):
    """An object could not be stored."""


class RetriableDelivery(DeliveryError):
    """A failure that may heal: try the same object again later."""


class PermanentDelivery(DeliveryError):
    """A failure that retrying will not heal without an operator."""
