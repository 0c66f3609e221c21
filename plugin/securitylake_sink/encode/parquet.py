"""Arrow table → Parquet bytes with Security Lake's conventions: zstd, pages ≤ 1 MB, row groups
≤ 256 MB, rows sorted by ``time``; the OCSF version and class in the file's key-value metadata."""

from __future__ import annotations

__all__ = ["encode_parquet"]

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from securitylake_sink.columnar import is_ascending

# Security Lake custom-source best practices: data pages ≤ 1 MB, row groups ≤ 256 MB.
DATA_PAGE_BYTES = 1024 * 1024
ROW_GROUP_BYTES = 256 * 1024 * 1024
COMPRESSION = "zstd"


def encode_parquet(table: pa.Table) -> bytes:
    """Sort by ``time`` and write Parquet; the schema (with its OCSF metadata) is kept as is."""
    if table.num_rows > 1 and not is_ascending(table.column("time")):
        table = table.take(pc.sort_indices(table, sort_keys=[("time", "ascending")]))
    # Arrow size is an upper bound of the compressed size, so this keeps row groups in bounds.
    # All-null columns share buffers (columnar.nulls): count each buffer once.
    per_row = max(1, table.get_total_buffer_size() // max(1, table.num_rows))
    rows_per_group = max(1, min(table.num_rows or 1, ROW_GROUP_BYTES // per_row))
    sink = pa.BufferOutputStream()
    # Parquet's own schema carries every type (read back, it equals the class schema), so the
    # serialized Arrow schema is left out: 50-110 KB per object for the wide classes. The
    # schema's key-value metadata (ocsf.version, ocsf.class_uid) is kept.
    with pq.ParquetWriter(
        sink,
        table.schema,
        compression=COMPRESSION,
        data_page_size=DATA_PAGE_BYTES,
        write_statistics=["time"],
        store_schema=False,
    ) as writer:
        writer.write_table(table, row_group_size=rows_per_group)
        metadata = table.schema.metadata or {}
        if metadata:
            writer.add_key_value_metadata({k.decode(): v.decode() for k, v in metadata.items()})
    return bytes(sink.getvalue().to_pybytes())
