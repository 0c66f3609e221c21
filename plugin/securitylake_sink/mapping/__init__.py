"""The mapping stage: declarative rules (``rules/*.yaml``, see ``rules/README.md``) compiled to
column operations over a batch of records, routed by tag, validated against the OCSF schema."""

from __future__ import annotations

__all__ = ["DeadLetter", "MapResult", "MappedBatch", "Mapper", "register_function"]

from securitylake_sink.mapping.basic import DeadLetter
from securitylake_sink.mapping.functions import register_function
from securitylake_sink.mapping.mapper import MappedBatch, Mapper, MapResult
