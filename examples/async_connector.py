"""An async connector: @resilient on async methods, many calls at once.

The outside system here is not HTTP: a local key-value service speaking a
line protocol over TCP (``GET key`` -> ``VALUE ...``), started with asyncio
streams. It drops every fourth connection without answering. Twenty lookups run
concurrently; each dropped one is retried after a backoff (asyncio.sleep, so
the other lookups go on meanwhile), and every lookup gets its answer within a
deadline of 2 seconds.

Run: python examples/async_connector.py   (about 1 second)
"""

from __future__ import annotations

import asyncio
import itertools

from connector_resilience import Policy, RetryEvent, resilient, summarize


class KeyValueService:
    """``GET key\\n`` -> ``VALUE <value>\\n``; every fourth connection is dropped."""

    def __init__(self) -> None:
        self.connections = itertools.count(1)
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if next(self.connections) % 4 == 0:
            self.dropped += 1
            writer.close()  # hang up without answering
            return
        key = line.decode().removeprefix("GET ").strip()
        await asyncio.sleep(0.005)  # a little work
        writer.write(f"VALUE {key.upper()}\n".encode())
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


retries: list[RetryEvent] = []

POLICY = Policy(
    retry={"max_attempts": 5, "base_ms": 50, "cap_ms": 400},
    store={"url": "memory://kv-example"},
)


class KeyValueClient:
    connector_name = "kv"

    def __init__(self, port: int) -> None:
        self.port = port

    @resilient(
        policy=POLICY,
        retry_on=(ConnectionError, asyncio.IncompleteReadError, TimeoutError),
        deadline_s=2.0,
        on_retry=retries.append,
    )
    async def get(self, key: str) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"GET {key}\n".encode())
            await writer.drain()
            async with asyncio.timeout(1):
                line = await reader.readuntil(b"\n")  # IncompleteReadError if dropped
        finally:
            writer.close()
        return line.decode().removeprefix("VALUE ").strip()


async def main() -> None:
    service = KeyValueService()
    await service.start()
    client = KeyValueClient(service.port)
    keys = [f"sku-{n}" for n in range(1, 21)]
    try:
        values = await asyncio.gather(*(client.get(key) for key in keys))
    finally:
        await service.stop()

    assert values == [key.upper() for key in keys]
    print(f"{len(values)} lookups answered: {values[0]} ... {values[-1]}")
    print(f"the service dropped {service.dropped} connections; each was retried:")
    for event in retries[:3]:
        print(
            f"  {event.operation} attempt {event.attempt} failed "
            f"({type(event.error).__name__}); next in {event.delay_s * 1000:.0f} ms"
        )
    s = summarize("kv", policy=POLICY)
    print(
        f"{s.total_calls} calls, {s.attempts} attempts, {s.errors} errors; "
        f"p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
