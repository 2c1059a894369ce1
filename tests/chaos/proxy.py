"""A TCP proxy on loopback that can make the broker slow for the processes behind it.

The relays reach Redis through it (``topology``): it passes bytes through until
:meth:`LatencyProxy.slow`, then holds every answer from Redis for ``delay`` seconds and
hands it on one byte at a time, ``byte_interval`` apart. A reply of a few bytes then
takes longer than the relay's hold limit (``OUTBOX_PUBLISH_TIMEOUT``), yet no single
read waits as long as the client's ``socket_timeout``: a slow broker, not a dead one,
which is what a socket timeout cannot bound.

Only 127.0.0.1 is ever bound or dialled.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

LOOPBACK = "127.0.0.1"


class LatencyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._delay = 0.0
        self._byte_interval = 0.0
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        #: Answers held back while slow (a count, for the fault's record).
        self.slowed_replies = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def slow(self, delay: float, byte_interval: float) -> None:
        with self._lock:
            self._delay, self._byte_interval = delay, byte_interval

    def fast(self) -> None:
        self.slow(0.0, 0.0)

    def _mode(self) -> tuple[float, float]:
        with self._lock:
            return self._delay, self._byte_interval

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=2)
                upstream.settimeout(None)
            except OSError:  # Redis is down (another fault): the client sees a reset
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.add(s)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                delay, interval = self._mode() if answers else (0.0, 0.0)
                if not delay and not interval:
                    sink.sendall(data)
                    continue
                self.slowed_replies += 1
                time.sleep(delay)
                for i in range(len(data)):
                    sink.sendall(data[i : i + 1])
                    if self._mode()[1] and i + 1 < len(data):
                        time.sleep(interval)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
                self._sockets.discard(s)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in list(self._sockets):
            with contextlib.suppress(OSError):
                s.close()
