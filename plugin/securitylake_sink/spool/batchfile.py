"""Batch files: the mapped OCSF rows of one (location, class, event hour), on disk until stored.

A file is a JSON header record followed by frames, each an Arrow record batch of the class
pruned to the columns that hold values (an IPC stream: schema, then batch; LZ4 buffers) and
tagged with the write-ahead-log position of the chunk it came from. All records use the
write-ahead log's framing (magic, length, crc32), so a torn tail is found the same way.
"""

from __future__ import annotations

__all__ = ["BatchFile", "BatchHeader"]

import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import is_ascending, prune_batch, union_type, widen_batch
from securitylake_sink.errors import SpoolCorrupt
from securitylake_sink.memory import give_back
from securitylake_sink.spool.wal import WalPosition, encode_record, fsync_dir, read_records, scan_records

FRAME_POS = struct.Struct(">QQ")  # write-ahead-log segment and offset of the source chunk
# Rows in the frame and their size as Arrow arrays in memory: what reading the batch back costs,
# and so what batch.max_bytes bounds (the frame itself is LZ4-compressed and far smaller).
ROWS = struct.Struct(">QQ")
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
# A batch's frames decompress into buffers mostly under malloc's mmap threshold: freed, they stay
# in the process until trimmed. Sorting hands back what the unsorted columns held each time this
# much is freed; without it the old columns stayed resident beside the sorted ones. For a batch
# of 34 MB (Arrow): 72-76 MB over the base at the peak without, 55-56 MB with it, for 15-20 ms
# more CPU (malloc_trim walks the heap; every 2 MiB cost more CPU for no lower peak).
TRIM_EVERY_BYTES = 4 * 1024 * 1024
SUFFIX = ".batch"


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """What a batch file holds and where its object goes; fixed when the file is created."""

    batch_id: str
    class_uid: int
    ocsf_version: str
    location: str
    hour: int  # event hour: epoch seconds // 3600, UTC
    key: str  # the object key, decided before any upload attempt
    created_ns: int


class BatchFile:
    """One batch on disk. Appends are buffered; ``sync`` makes them durable."""

    def __init__(self, path: Path, header: BatchHeader, *, rows: int = 0, size: int = 0) -> None:
        self.path = path
        self.header = header
        self.rows = rows
        self.bytes = size
        self._file: BinaryIO | None = None
        self._dirty = False

    @classmethod
    def create(cls, directory: Path, header: BatchHeader) -> BatchFile:
        path = directory / f"{header.batch_id}{SUFFIX}"
        with path.open("xb") as f:
            f.write(encode_record(json.dumps(asdict(header)).encode()))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(directory)
        return cls(path, header)

    @classmethod
    def open(cls, path: Path, checkpoint: WalPosition | None = None, *, sealed: bool = False) -> BatchFile:
        """Open an existing file; cut a torn tail, and the frames of chunks past ``checkpoint``
        (those chunks are mapped again from the write-ahead log). A ``sealed`` file was fsynced
        whole before it was sealed: bytes past its last good frame are damage (SpoolCorrupt)."""
        data = path.read_bytes()
        batch, good = cls._scan(path, data, checkpoint)
        if sealed and good < len(data):
            raise SpoolCorrupt(f"sealed batch file {path.name} is damaged at byte {good} ({batch.rows} rows before it)")
        if good < len(data):
            with path.open("r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        return batch

    @classmethod
    def peek(cls, path: Path) -> BatchFile:
        """Read an existing file's header and row count without changing it (another process
        may own it)."""
        return cls._scan(path, path.read_bytes(), None)[0]

    @classmethod
    def _scan(cls, path: Path, data: bytes, checkpoint: WalPosition | None) -> tuple[BatchFile, int]:
        """The batch in ``data`` and where its last frame at or before ``checkpoint`` ends."""
        records = scan_records(data)
        first = next(records, None)
        if first is None:
            raise SpoolCorrupt(f"batch file {path.name} has no readable header")
        try:
            header = BatchHeader(**json.loads(first[2]))
        except (ValueError, TypeError) as exc:
            raise SpoolCorrupt(f"batch file {path.name} has an unreadable header: {exc}") from exc
        good, rows, size = first[1], 0, 0
        for _, end, payload in records:
            pos = WalPosition(*FRAME_POS.unpack_from(payload))
            if checkpoint is not None and pos > checkpoint:
                break
            frame_rows, frame_bytes = ROWS.unpack_from(payload, FRAME_POS.size)
            good, rows, size = end, rows + frame_rows, size + frame_bytes
        return cls(path, header, rows=rows, size=size), good

    def append(self, batch: pa.RecordBatch, position: WalPosition) -> None:
        if self._file is None:
            self._file = self.path.open("ab")
        payload = FRAME_POS.pack(position.segment, position.offset) + _serialize(batch)
        self._file.write(encode_record(payload))
        self.rows += batch.num_rows
        self.bytes += ROWS.unpack_from(payload, FRAME_POS.size)[1]
        self._dirty = True

    def sync(self) -> None:
        if self._file is not None and self._dirty:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._dirty = False

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def move_to(self, directory: Path) -> None:
        """Seal: move into ``directory`` (same file system), durably."""
        self.close()
        target = directory / self.path.name
        old_dir = self.path.parent
        self.path.replace(target)
        fsync_dir(directory)
        fsync_dir(old_dir)
        self.path = target

    def read_table(self, schema: pa.Schema) -> pa.Table:
        """Every frame as one table in ``schema``, rows sorted by ``time``; a bad frame inside
        the file is corruption. Rows are sorted while pruned, then widened (see columnar.py)."""
        batches = self._read_frames(schema)
        if not batches:
            return schema.empty_table()
        union = union_type(pa.struct(list(schema)), [pa.struct(list(b.schema)) for b in batches])
        narrow = pa.schema(list(union)) if isinstance(union, pa.StructType) else schema
        table = pa.concat_tables([widen_batch(b, narrow) for b in batches])
        batches.clear()
        if "time" in narrow.names and not is_ascending(table.column("time")):
            # Sorted a column at a time, each unsorted column let go once its sorted copy exists,
            # and the pages it held handed back (see TRIM_EVERY_BYTES): the peak is the table plus
            # one column, not two tables. (This function holds the only reference: a caller's
            # would keep the whole unsorted table alive.) A column of several chunks is joined
            # first and its chunks let go: take on chunks joins them itself, holding the chunks,
            # the joined copy and the result at once.
            order = pc.sort_indices(table.column("time"))  # stable: rows of one millisecond keep their order
            pruned, columns, freed = table.schema, [], 0
            for _ in range(table.num_columns):
                column: pa.ChunkedArray | pa.Array = table.column(0)
                table = table.remove_column(0)
                if isinstance(column, pa.ChunkedArray) and column.num_chunks > 1:
                    column = column.combine_chunks()
                columns.append(column.take(order))
                freed += column.nbytes
                del column
                if freed >= TRIM_EVERY_BYTES:
                    give_back()
                    freed = 0
            table = pa.Table.from_arrays(columns, schema=pruned)
        return widen_batch(table, schema)

    def _read_frames(self, schema: pa.Schema) -> list[pa.RecordBatch]:
        """The file's frames, decompressed; read a frame at a time, so that the file's compressed
        bytes (a third of the batches' size) are not held beside the batches at the peak."""
        batches = []
        end = 0
        with self.path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            for index, (_, frame_end, payload) in enumerate(read_records(f)):
                end = frame_end
                if index == 0:
                    continue
                try:
                    batches.append(_deserialize(pa.py_buffer(payload)[FRAME_POS.size + ROWS.size :], schema))
                except (pa.ArrowException, ValueError) as exc:
                    raise SpoolCorrupt(f"batch file {self.path.name} has an unreadable frame: {exc}") from exc
                del payload  # a frame's bytes go before the next frame's come in
        if end != size:
            raise SpoolCorrupt(f"batch file {self.path.name} is damaged at byte {end}")
        return batches


def _serialize(batch: pa.RecordBatch) -> bytes:
    """One frame: the batch pruned to the columns that hold values (see columnar.py), as an Arrow
    IPC stream (its schema, then the batch) with LZ4-compressed buffers."""
    pruned = prune_batch(batch)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pruned.schema, options=IPC_OPTIONS) as writer:
        writer.write_batch(pruned)
    return ROWS.pack(pruned.num_rows, pruned.nbytes) + bytes(sink.getvalue().to_pybytes())


def _deserialize(buffer: pa.Buffer, schema: pa.Schema) -> pa.RecordBatch:
    """A frame's batch: a pruned IPC stream, or (files of earlier versions) one record-batch
    message in the full class ``schema``."""
    message = pa.ipc.read_message(buffer)
    if message.type == "schema":
        return pa.ipc.open_stream(buffer).read_next_batch()
    return pa.ipc.read_record_batch(message, schema)
