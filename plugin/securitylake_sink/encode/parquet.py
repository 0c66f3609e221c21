"""Arrow table → Parquet bytes with Security Lake's conventions: zstd, pages ≤ 1 MB, row groups
≤ 256 MB, rows sorted by ``time``."""

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
    pq.write_table(
        table,
        sink,
        compression=COMPRESSION,
        data_page_size=DATA_PAGE_BYTES,
        row_group_size=rows_per_group,
        write_statistics=["time"],
        store_schema=True,
    )
    return bytes(sink.getvalue().to_pybytes())
