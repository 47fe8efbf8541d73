"""A TCP proxy between workers and a PostgreSQL cluster, to cut them off at will.

A worker given ``proxy.url`` (the cluster's URL with the proxy's port) reaches the
database only through the proxy, one pair of sockets per connection and a thread
per direction. Two faults:

* :meth:`Proxy.black_hole`: a partition. The proxy stops moving bytes either way
  but closes nothing: neither side is refused or reset, queries and answers just
  never arrive (new connections are accepted and hang the same way). :meth:`heal`
  moves the held bytes on, in order, as TCP delivers its retransmissions once a
  partition ends. (The proxy's kernel still acknowledges what a worker sends, so
  TCP-level probes, keepalives and ``tcp_user_timeout``, cannot notice this
  partition; only a deadline the client keeps on its own calls can.)
* :meth:`cut`: every connection through the proxy is reset at once (as a crashed
  middlebox or a restarted NAT does); new connections are accepted as before.

One proxy per worker makes a partition of that worker alone.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator

CHUNK = 65536


class Proxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``target_host``:``target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()  # set: bytes flow
        self._open.set()
        self._closed = False
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.connections = 0  # accepted so far
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    def url(self, server_url: str) -> str:
        """``server_url`` (``postgresql://user@host:port/db``) with this proxy's port."""
        head, _, tail = server_url.partition("://")
        authority, slash, path = tail.partition("/")
        userinfo, at, hostport = authority.rpartition("@")
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
        return f"{head}://{userinfo}{at}{host}:{self.port}{slash}{path}"

    # -- faults ----------------------------------------------------------------------
    def black_hole(self) -> None:
        """Stop forwarding (both ways, every connection, new ones too); close nothing."""
        self._open.clear()

    def heal(self) -> None:
        """Forward again, the held bytes first."""
        self._open.set()

    @property
    def partitioned(self) -> bool:
        return not self._open.is_set()

    def cut(self) -> int:
        """Reset every open connection; how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self._open.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    # -- forwarding ------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()  # a partition holds the connection's first bytes as well
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pairs.append((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._open.wait()
                readable, _, _ = select.select([src], [], [], 0.2)
                if not readable:
                    continue
                if not self._open.is_set():
                    continue  # partitioned since: hold what arrived
                data = src.recv(CHUNK)
                if not data:
                    break
                self._open.wait()
                dst.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._pairs = [p for p in self._pairs if src not in p]
            _reset(src)
            _reset(dst)


def _reset(sock: socket.socket) -> None:
    """Close with a RST (linger 0): the peer learns at once that the connection is gone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def proxy_to(target_port: int) -> Iterator[Proxy]:
    """A proxy to 127.0.0.1:``target_port``, closed afterwards."""
    proxy = Proxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
