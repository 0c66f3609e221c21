"""ChunkSink fakes for the source tests: record every chunk, or hold submits like a slow fsync."""

from __future__ import annotations

import asyncio

from securitylake_sink.model import Chunk


class RecordingSink:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []

    async def submit(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)


class GatedSink(RecordingSink):
    """Holds every submit until ``release`` is set, like a slow fsync."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def submit(self, chunk: Chunk) -> None:
        self.entered.set()
        await self.release.wait()
        self.chunks.append(chunk)
