"""The job's control channel: pickled messages between the driver (global rank 0) and every rank.

A star of plain TCP connections, not a process group: the driver listens on a port it bound and
holds (published in the job store), every other rank connects once and says who it is. Why not a
gloo group: a gloo ``recv`` is a collective bounded by the group timeout, so an idle engine rank
waiting for its next command died at ``distributed_timeout_minutes`` (about an hour into a 405B
run), and a ``send`` to a rank still loading its engine timed out the same way. Here:

- ``send`` returns once the kernel holds the bytes; it never waits for the receiver to ask;
- ``recv`` waits in short slices and calls ``alive()`` between them (the watchdog's verdict), so a
  wait lasts as long as the work behind it -- an engine start, a generation, an idle rank -- and a
  dead peer ends it at once: its connection closes (:class:`ChannelClosed` names the rank) or the
  watchdog names it within its timeout;
- the driver holds one connection per rank (O(world) sockets, none between other ranks).

Messages come only from ranks of the same job (not hostile input). Several threads of one process
may talk to the same peer on different ``tag`` values; a frame read for another tag is queued for it.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

__all__ = ["DRIVER", "ChannelClosed", "ControlChannel"]

DRIVER = 0
SLICE_S = 1.0  # longest a wait goes without checking alive()
_FRAME = struct.Struct("!QI")  # payload bytes, tag
_HELLO = struct.Struct("!I")  # the connecting rank


class ChannelClosed(RuntimeError):
    """A peer's connection closed (its process ended) or a wait ran past its own deadline."""


class _Peer:
    def __init__(self, rank: int, sock: socket.socket):
        self.rank, self.sock = rank, sock
        self.send_lock = threading.Lock()
        self.cond = threading.Condition()
        self.frames: dict[int, deque[bytes]] = defaultdict(deque)
        self.reading = False  # one thread reads the socket at a time; the others wait on cond
        self.error: str | None = None

    def read_exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError("connection closed")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read_frame(self, wait_s: float) -> tuple[int, bytes] | None:
        """One frame, or None when nothing arrived within ``wait_s`` (a frame that started arriving
        is read to its end: the sender wrote it in one piece)."""
        ready, _, _ = select.select([self.sock], [], [], wait_s)
        if not ready:
            return None
        size, tag = _FRAME.unpack(self.read_exact(_FRAME.size))
        return tag, self.read_exact(size)


class ControlChannel:
    """See the module docstring. ``alive()`` raises when this rank must stop waiting (the
    watchdog's verdict); ``host`` is the driver's published address (its node's address)."""

    def __init__(
        self,
        store,
        rank: int,
        world_size: int,
        host: str,
        alive: Callable[[], None] | None = None,
        connect_timeout_s: float = 600.0,
    ):
        from megatron_tulu.engine.job import lookup, publish

        self.rank, self.world_size = rank, world_size
        self.alive = alive or (lambda: None)
        self._peers: dict[int, _Peer] = {}
        self._joined = threading.Condition()
        self._closed = False
        self._listener: socket.socket | None = None
        if rank == DRIVER:
            self._listener = socket.create_server((host, 0), backlog=min(max(world_size, 16), 4096))
            publish(store, "control/driver", (host, self._listener.getsockname()[1]))
            threading.Thread(target=self._accept, name="control-accept", daemon=True).start()
            return
        addr = lookup(store, "control/driver", connect_timeout_s, alive=self.alive)
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                sock = socket.create_connection(addr, timeout=30)
                break
            except OSError as exc:  # the driver's listener may be a moment behind its key
                if time.monotonic() > deadline:
                    raise ChannelClosed(f"rank {rank}: cannot reach the driver at {addr}: {exc}") from exc
                self.alive()
                time.sleep(0.5)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_HELLO.pack(rank))
        self._peers[DRIVER] = _Peer(DRIVER, sock)

    # ------------------------------------------------------------------------------ driver side
    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
                sock.settimeout(30)
                rank = _HELLO.unpack(_Peer(-1, sock).read_exact(_HELLO.size))[0]
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, EOFError, struct.error):
                if self._closed:
                    return
                continue  # a connection that died before saying who it is
            with self._joined:
                self._peers[rank] = _Peer(rank, sock)
                self._joined.notify_all()

    def _peer(self, rank: int, deadline: float | None = None) -> _Peer:
        if rank == self.rank or not 0 <= rank < self.world_size:
            raise ValueError(f"rank {self.rank}: no control connection to rank {rank}")
        if self.rank != DRIVER and rank != DRIVER:
            raise ValueError(
                f"the control channel joins each rank to the driver only (rank {self.rank} -> {rank})"
            )
        with self._joined:
            while rank not in self._peers:
                if self._closed:
                    raise ChannelClosed(f"rank {self.rank}: control channel closed")
                self._check_deadline(deadline, f"rank {rank} to connect")
                self._joined.wait(SLICE_S)
                self.alive()
            return self._peers[rank]

    def _check_deadline(self, deadline: float | None, what: str) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise ChannelClosed(f"rank {self.rank}: gave up waiting for {what}")

    # ------------------------------------------------------------------------------- messages
    def send(self, obj: Any, dst: int, tag: int = 0) -> None:
        peer = self._peer(dst)
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        with peer.send_lock:
            try:
                peer.sock.sendall(_FRAME.pack(len(payload), tag) + payload)
            except OSError as exc:
                raise ChannelClosed(
                    f"rank {dst}'s control connection closed ({exc}): its process ended"
                ) from exc

    def recv(self, src: int, tag: int = 0, timeout_s: float | None = None) -> Any:
        """The next message from ``src`` on ``tag``; waits as long as needed (or ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        peer = self._peer(src, deadline)
        while True:
            with peer.cond:
                if peer.frames[tag]:
                    return pickle.loads(peer.frames[tag].popleft())
                if peer.error is not None:
                    raise ChannelClosed(peer.error)
                if peer.reading:  # another thread of this process reads: it queues our frame
                    peer.cond.wait(SLICE_S)
                    self.alive()
                    self._check_deadline(deadline, f"a message from rank {src}")
                    continue
                peer.reading = True
            try:
                frame = peer.read_frame(SLICE_S)
            except (OSError, EOFError) as exc:
                with peer.cond:
                    peer.reading = False
                    peer.error = f"rank {src}'s control connection closed ({exc}): its process ended"
                    peer.cond.notify_all()
                raise ChannelClosed(peer.error) from exc
            with peer.cond:
                peer.reading = False
                if frame is not None:
                    peer.frames[frame[0]].append(frame[1])
                peer.cond.notify_all()
            if frame is None:
                self.alive()
                self._check_deadline(deadline, f"a message from rank {src}")

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        for peer in list(self._peers.values()):
            try:
                peer.sock.close()
            except OSError:
                pass
