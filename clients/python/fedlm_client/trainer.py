"""A FedLM trainer in PyTorch: HELLO, FETCH the release, train H local AdamW steps, send the
pseudo-gradient as an UPDATE stream, resend it until acknowledged, repeat.

The rules it keeps are PROTOCOL.md's, and the Swift trainer's:
- the update is written to `<state>/pending-update` (atomically, fsynced) before it is first
  sent, resent with the same id until an ACK (or a final refusal: an ERROR that refers to it)
  arrives, and resent first thing after a restart;
- while it trains it sends a HEARTBEAT about once a second (the aggregator forgets a trainer
  silent for its timeout, 60 s by default), and it reads every reply;
- a FETCH names the version it holds (`haveVersion`): the answer is a RELEASE only when there
  is a newer one, else a HEARTBEAT.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import zmq

from . import wire
from .model import LocalModel, Training
from .shards import DataError, TextData, TokenData

log = logging.getLogger("fedlm.torch")


@dataclass
class Curve:
    """A CURVE key pair and the broker's public key, each 40 characters of Z85."""
    public: str
    secret: str
    server: str

    @staticmethod
    def load(prefix: str, broker_key_file: str) -> "Curve":
        def read(path):
            try:
                with open(path) as f:
                    key = f.read().strip()
            except OSError as e:
                raise SystemExit(f"{path}: {e.strerror}")
            if len(key) != 40:
                raise SystemExit(f"{path}: a CURVE key is 40 characters of Z85 text")
            return key
        return Curve(read(prefix + ".public"), read(prefix + ".secret"), read(broker_key_file))


@dataclass
class Options:
    trainer_id: str
    broker: str
    data: Optional[str]
    config: object  # transformers.GPT2Config
    training: Training
    device: str = "cpu"
    clusters: Optional[list] = None
    cluster: Optional[str] = None
    local_steps: int = 20
    tokens: Optional[int] = None
    state: str = "runs/trainers/torch"
    ack_timeout: float = 30.0
    curve: Optional[Curve] = None
    text: Optional[list] = None
    tokenizer: Optional[str] = None
    fetch_window: int = 64  # chunks per window of a release fetch (0: the whole release at once)


@dataclass
class Stats:
    tokens: int = 0
    updatesAcknowledged: int = 0
    trainingSeconds: float = 0.0
    wallSeconds: float = 0.0
    bytesSent: int = 0
    bytesReceived: int = 0
    refused: list = field(default_factory=list)


class WindowedFetch:
    """Which FETCH to send as a release streams in, window by window (`WindowedFetch` in the Swift
    trainer): the next `window` chunks when half of the last are in; after a gap, once, from the
    first chunk missing."""

    def __init__(self, window: int, request: dict, gaps: int = 0):
        self.window, self.request = window, request
        self.head, self.asked, self.gaps, self.resumed_at = None, 0, gaps, None

    def first(self) -> dict:
        return dict(self.request, window=self.window)

    def progress(self, head: int, received: int, count: int, gaps: int) -> Optional[dict]:
        if head != self.head:
            self.head, self.asked, self.resumed_at = head, min(count, self.window), None
        gap, self.gaps = gaps > self.gaps, gaps
        if gap:
            if self.resumed_at == received:
                return None
            self.resumed_at = received
            return self.continuation(received, count)
        if self.asked >= count or received < self.asked - self.window // 2:
            return None
        return self.continuation(self.asked, count)

    def stalled(self, head: int, received: int, count: int) -> Optional[dict]:
        """The stream stopped: ask again from the first chunk missing (None: no stream of ours)."""
        if head != self.head or received >= count:
            return None
        self.resumed_at = received
        return self.continuation(received, count)

    def continuation(self, start: int, count: int) -> dict:
        self.asked = min(count, start + self.window)
        return dict(self.request, window=self.window, resume={"head": self.head, "next": start})


class Connection:
    """A DEALER to the broker's trainer ROUTER, routing id = trainer id, with FedLM's limits."""

    def __init__(self, options: Options, stats: Stats):
        self.stats = stats
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        s = self.socket
        s.setsockopt(zmq.ROUTING_ID, options.trainer_id.encode())
        s.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 1000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 120_000)
        s.setsockopt(zmq.LINGER, 2000)
        if options.curve:
            s.curve_publickey = options.curve.public.encode()
            s.curve_secretkey = options.curve.secret.encode()
            s.curve_serverkey = options.curve.server.encode()
        s.connect(options.broker)
        self.receiver = wire.StreamReceiver(resumes_releases=options.fetch_window > 0)
        self.on_partial = None  # called after each message that did not complete one

    def send(self, frames: list):
        self.stats.bytesSent += sum(len(f) for f in frames)
        self.socket.send_multipart(frames, copy=False)

    def receive(self, timeout: float) -> Optional[wire.Message]:
        """The next whole message within `timeout` seconds (None if none); a broken stream or
        message is logged and skipped (the sender's retry recovers)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(int(left * 1000)):
                return None
            frames = self.socket.recv_multipart()
            self.stats.bytesReceived += sum(len(f) for f in frames)
            try:
                message = self.receiver.receive(frames)
            except wire.ProtocolError as e:
                log.warning("dropped a message from the broker: %s", e)
                continue
            if message is not None:
                return message
            if self.on_partial is not None:
                self.on_partial()

    def close(self):
        self.socket.close()


class PendingUpdate:
    """The unacknowledged update's frames in one file, written atomically (temp file, fsync,
    rename, fsync of the directory) before the first send."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, "pending-update")

    def save(self, update_id: str, messages: list):
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps({"updateID": update_id, "messages": len(messages)}).encode() + b"\n")
            for frames in messages:
                f.write(struct.pack("<I", len(frames)))
                for frame in frames:
                    f.write(struct.pack("<Q", len(frame)))
                    f.write(frame)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self):
        """(update id, messages) of the pending update, or None."""
        if not os.path.exists(self.path):
            return None
        with open(self.path, "rb") as f:
            head = json.loads(f.readline())
            messages = []
            for _ in range(head["messages"]):
                (count,) = struct.unpack("<I", f.read(4))
                frames = []
                for _ in range(count):
                    (n,) = struct.unpack("<Q", f.read(8))
                    frame = f.read(n)
                    if len(frame) != n:
                        raise ValueError(f"{self.path}: truncated")
                    frames.append(frame)
                messages.append(frames)
        return head["updateID"], messages

    def clear(self):
        if os.path.exists(self.path):
            os.remove(self.path)


class Trainer:
    def __init__(self, options: Options):
        self.o = options
        self.stats = Stats()
        self.data = TextData(options.tokenizer, options.text) if options.text else TokenData(options.data, options.clusters)
        if self.data.vocabulary != options.config.vocab_size:
            raise DataError(f"{options.tokenizer or options.data}: vocabulary {self.data.vocabulary}, "
                            f"the model's is {options.config.vocab_size}")
        self.local = LocalModel(options.config, options.training, options.device)
        self.sequence = options.training.sequence_length or options.config.n_positions
        self.rng = np.random.default_rng([options.training.seed, abs(hash(options.trainer_id)) % (1 << 32)])
        self.pending = PendingUpdate(options.state)
        self.release = None  # (header info, specs, values)
        self.welcome = None
        self.last_sent = 0.0
        self.alive_outstanding = 0  # HEARTBEATs sent while training, whose answers are not news

    # --- the conversation -------------------------------------------------------------------

    def send(self, frames):
        self.connection.send(frames)
        self.last_sent = time.monotonic()

    def reply(self, timeout: float) -> Optional[wire.Message]:
        """The next message, skipping the answers to the heartbeats sent while training (so a
        FETCH's HEARTBEAT answer, "nothing newer", is never confused with one of them)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.connection.receive(max(0.0, deadline - time.monotonic()))
            if message is not None and message.type == wire.HEARTBEAT and self.alive_outstanding > 0:
                self.alive_outstanding -= 1
                continue
            return message

    def hello(self):
        """HELLO until WELCOME (resent every 2 s: the broker may not be up yet)."""
        header = {"trainerID": self.o.trainer_id, "cluster": self.o.cluster,
                  "assignment": "declared" if self.o.cluster else None, "software": "fedlm-client (PyTorch)"}
        while True:
            self.send(wire.simple(wire.HELLO, header))
            reply = self.reply(2.0)
            if reply is None:
                continue
            if reply.type == wire.WELCOME:
                self.welcome = reply.header
                log.info("%s: welcomed (version %s, mode %s)", self.o.trainer_id, reply.header.get("latestVersion"),
                         reply.header.get("mode"))
                return
            if reply.type == wire.ERROR:
                raise SystemExit(f"HELLO refused: {reply.header.get('code')}: {reply.header.get('detail')}")

    def fetch(self, have: Optional[int]) -> bool:
        """Asks for a release newer than `have`; True when one arrived, False on a HEARTBEAT.
        With a fetch window (PROTOCOL.md, "Windowed fetches"), the release comes `fetch_window`
        chunks at a time: the next window is asked for when half of the last has arrived, and
        after a gap or a stall the stream resumes from the first chunk missing."""
        request = {"cluster": self.o.cluster, "haveVersion": have}
        receiver = self.connection.receiver
        window = WindowedFetch(self.o.fetch_window, request, receiver.gaps) if self.o.fetch_window > 0 else None

        def more():
            progress = receiver.release_progress()
            if window is not None and progress is not None:
                continuation = window.progress(*progress, gaps=receiver.gaps)
                if continuation is not None:
                    self.send(wire.simple(wire.FETCH, continuation))

        first = window.first() if window is not None else request

        def again() -> dict:
            # A retry resumes the stream in progress from its first missing chunk, if there is one.
            progress = receiver.release_progress()
            return (window is not None and progress is not None and window.stalled(*progress)) or first

        self.connection.on_partial = more
        try:
            return self.fetch_until_answered(have, first, again)
        finally:
            self.connection.on_partial = None

    def fetch_until_answered(self, have: Optional[int], first: dict, again) -> bool:
        request = first
        while True:
            self.send(wire.simple(wire.FETCH, request))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                reply = self.reply(deadline - time.monotonic())
                if reply is None:
                    break
                if reply.type == wire.RELEASE:
                    info = reply.header["info"]
                    if info.get("stepFrom") is not None:
                        continue  # never asked for steps (no `holds`)
                    self.local.check(reply.tensors.specs)
                    self.release = (info, reply.tensors.specs, reply.tensors.values)
                    return True
                if reply.type == wire.HEARTBEAT and have is not None:
                    return False
                if reply.type == wire.ERROR:
                    code = reply.header.get("code")
                    if code == "unknownTrainer":
                        self.hello()
                        break
                    log.warning("FETCH answered %s: %s; retrying", code, reply.header.get("detail"))
                    time.sleep(1)
                    break
            # Asked again once the answer is overdue, from where the stream stands now.
            request = again()

    def deliver(self, update_id: str, messages: list) -> Optional[dict]:
        """Sends the update until an ACK or a final refusal refers to it; returns the ACK (None
        when refused)."""
        while True:
            for frames in messages:
                self.send(frames)
            deadline = time.monotonic() + self.o.ack_timeout
            resend = False
            while not resend:
                left = deadline - time.monotonic()
                reply = self.reply(left) if left > 0 else None
                if reply is None:
                    log.info("%s: no answer to update %s in %.0f s; sending it again", self.o.trainer_id, update_id,
                             self.o.ack_timeout)
                    resend = True
                elif reply.type == wire.ACK and reply.header.get("updateID") == update_id:
                    self.pending.clear()
                    return reply.header
                elif reply.type == wire.ERROR:
                    code, refers = reply.header.get("code"), reply.header.get("refersTo")
                    if refers == update_id and code not in ("unknownTrainer", "unavailable"):
                        log.warning("%s: update %s refused: %s: %s", self.o.trainer_id, update_id, code,
                                    reply.header.get("detail"))
                        self.stats.refused.append({"updateID": update_id, "code": code, "detail": reply.header.get("detail")})
                        self.pending.clear()
                        return None
                    if code == "unknownTrainer":
                        self.hello()
                    else:
                        time.sleep(1)  # a broken transfer or a busy aggregator: send it again
                    resend = True

    def keep_alive(self):
        """The heartbeat duty while training: a HEARTBEAT after a second without sending, and
        every reply read (they are only HEARTBEATs here)."""
        while self.reply(0) is not None:
            pass
        if time.monotonic() - self.last_sent > 1.0:
            self.send(wire.simple(wire.HEARTBEAT, {}))
            self.alive_outstanding += 1

    # --- a round ------------------------------------------------------------------------------

    def train_round(self) -> dict:
        info, specs, values = self.release
        self.local.load(specs, values)
        start = values
        t0 = time.monotonic()
        tokens = 0
        batch = self.o.training.batch_size
        steps = self.o.local_steps
        if self.o.tokens is not None:
            steps = max(1, min(steps, -(-(self.o.tokens - self.stats.tokens) // (batch * self.sequence))))
        for _ in range(steps):
            inputs, targets = self.data.batch(self.rng, batch, self.sequence)
            loss = self.local.step(inputs, targets)
            tokens += inputs.size
            self.keep_alive()
        if self.local.device.type == "cuda":
            import torch
            torch.cuda.synchronize()
        self.stats.trainingSeconds += time.monotonic() - t0
        delta = (start - self.local.flat(specs)).astype(np.float32)
        update_id = f"{self.o.trainer_id}-{uuid.uuid4().hex}"
        update = {"updateID": update_id, "trainerID": self.o.trainer_id, "baseVersion": info["version"],
                  "cluster": self.o.cluster, "baseHeadVersion": info.get("headVersion"), "tokens": tokens, "localSteps": steps}
        log.info("%s: trained %d steps on v%d, loss %.4f", self.o.trainer_id, steps, info["version"], loss)
        return {"id": update_id, "tokens": tokens, "messages": wire.update_stream(update, wire.Tensors(specs, delta))}

    def run(self) -> Stats:
        started = time.monotonic()
        self.connection = Connection(self.o, self.stats)
        try:
            self.hello()
            resumed = self.pending.load()
            if resumed:
                update_id, messages = resumed
                log.info("%s: resending update %s left pending by the last run", self.o.trainer_id, update_id)
                ack = self.deliver(update_id, messages)
                if ack:
                    self.stats.updatesAcknowledged += 1
            self.fetch(None)
            while self.o.tokens is None or self.stats.tokens < self.o.tokens:
                update = self.train_round()
                self.pending.save(update["id"], update["messages"])
                ack = self.deliver(update["id"], update["messages"])
                if ack:
                    self.stats.tokens += update["tokens"]
                    self.stats.updatesAcknowledged += 1
                    if ack.get("outcome") == "buffered" and self.welcome.get("mode") == "sync":
                        while not self.fetch(self.release[0]["version"]):
                            time.sleep(0.2)
                        continue
                self.fetch(self.release[0]["version"])
            self.send(wire.simple(wire.BYE, {"reason": "token budget trained"}))
        finally:
            self.stats.wallSeconds = time.monotonic() - started
            self.write_stats()
            self.connection.close()
        return self.stats

    def write_stats(self):
        os.makedirs(self.o.state, exist_ok=True)
        with open(os.path.join(self.o.state, "stats.json"), "w") as f:
            json.dump(self.stats.__dict__, f, indent=2, sort_keys=True)
