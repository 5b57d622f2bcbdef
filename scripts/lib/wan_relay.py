#!/usr/bin/env python3
"""A TCP delay relay: latency, jitter and the cost of loss for links this kernel cannot shape.

The kernel here has tc's tbf and htb (bandwidth) but no netem (delay, loss), so `scripts/wan`
puts this relay in front of each region's connection to the hub: it accepts on LISTEN and
connects to TARGET, and forwards each direction's bytes after a one-way delay of half the round
trip, plus uniform jitter, in order (a piece never overtakes the one before it).

Loss is emulated as what it costs TCP: each piece is held back, with the probability that one of
its 1448-byte segments is lost, for a retransmission timeout (Linux's minimum 200 ms, or the round
trip when longer), and everything behind it waits too. Real packet loss would also shrink the
congestion window; this relay does not model that.

    wan_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT --rtt-ms 100 [--rate-mbit 100 [--pace]] [--jitter-ms 5] [--loss 0.001] [--seed 1]

With --pace the relay also holds each direction to the rate itself (a piece leaves the link's
queue only when the pieces before it have had their time on the wire), for links the kernel does
not shape; `scripts/wan` shapes the rate with tc instead.

It holds at most what the link itself would hold in flight (rate x one-way delay, at least
256 KiB) per direction, so TCP's backpressure reaches the sender as over a real path; a relay that
read everything at once would queue megabytes in front of every small message (bufferbloat).
"""
import argparse
import asyncio
import random
import time

PIECE = 64 * 1024
MSS = 1448


def parse(address):
    host, port = address.rsplit(":", 1)
    return host, int(port)


class Link:
    def __init__(self, rtt_ms, jitter_ms, loss, seed, rate_bytes=None):
        self.delay = rtt_ms / 2000.0
        self.rate = rate_bytes
        self.free = 0.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss
        self.rto = max(0.2, rtt_ms / 1000.0)
        self.random = random.Random(seed)

    def due(self, now, previous, size):
        sent = now
        if self.rate:
            # The piece's time on the wire, after the pieces queued before it.
            self.free = max(self.free, now) + size / self.rate
            sent = self.free
        due = sent + self.delay + self.random.uniform(-self.jitter, self.jitter)
        if self.loss > 0:
            segments = max(1, (size + MSS - 1) // MSS)
            if self.random.random() < 1 - (1 - self.loss) ** segments:
                due += self.rto
        return max(due, previous)


async def pump(reader, writer, link, capacity):
    """Reads pieces as they come and writes each at its due time, in order, with at most
    `capacity` bytes held."""
    queue = asyncio.Queue()
    held = 0
    room = asyncio.Condition()

    async def read():
        nonlocal held
        previous = 0.0
        try:
            while True:
                async with room:
                    await room.wait_for(lambda: held < capacity)
                data = await reader.read(PIECE)
                if not data:
                    break
                previous = link.due(time.monotonic(), previous, len(data))
                held += len(data)
                await queue.put((previous, data))
        finally:
            await queue.put((None, None))

    async def write():
        nonlocal held
        try:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                async with room:
                    held -= len(data)
                    room.notify_all()
        finally:
            try:
                writer.close()
            except Exception:
                pass

    await asyncio.gather(read(), write(), return_exceptions=True)


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listen")
    parser.add_argument("target")
    parser.add_argument("--rtt-ms", type=float, default=0)
    parser.add_argument("--jitter-ms", type=float, default=0)
    parser.add_argument("--loss", type=float, default=0)
    parser.add_argument("--rate-mbit", type=float, default=1000, help="the link's rate: bounds what the relay holds")
    parser.add_argument("--pace", action="store_true", help="also hold each direction to --rate-mbit")
    parser.add_argument("--seed", type=int, default=1)
    a = parser.parse_args()
    if not (0 <= a.loss < 1) or a.rtt_ms < 0 or a.jitter_ms < 0 or a.jitter_ms > a.rtt_ms / 2:
        parser.error("need 0 <= loss < 1, rtt >= 0 and 0 <= jitter <= rtt/2")
    target = parse(a.target)
    connections = 0

    async def serve(client_reader, client_writer):
        nonlocal connections
        connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        rate = a.rate_mbit * 1e6 / 8 if a.pace else None
        up = Link(a.rtt_ms, a.jitter_ms, a.loss, a.seed * 1000 + 2 * connections, rate)
        down = Link(a.rtt_ms, a.jitter_ms, a.loss, a.seed * 1000 + 2 * connections + 1, rate)
        capacity = max(256 * 1024, int(a.rate_mbit * 1e6 / 8 * a.rtt_ms / 2000))
        await asyncio.gather(pump(client_reader, server_writer, up, capacity), pump(server_reader, client_writer, down, capacity))

    host, port = parse(a.listen)
    server = await asyncio.start_server(serve, host, port)
    paced = f", paced at {a.rate_mbit} Mbit/s" if a.pace else ""
    print(f"relay {a.listen} -> {a.target}: rtt {a.rtt_ms} ms, jitter {a.jitter_ms} ms, loss {a.loss}{paced}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
