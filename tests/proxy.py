"""A TCP proxy on loopback that a test can cut, reset, slow down and restore, to take a real
database away (or make its network misbehave) while a cache uses it.

Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import struct
import threading
import time


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of one upstream server, with three faults.

    - `cut()`: closes every connection and refuses new ones (accepted and closed at once)
      until `restore()`: the server went away.
    - `reset()`: closes every connection with a TCP RST (SO_LINGER 0); new ones go through:
      a network blip, a server that dropped its clients.
    - `delay`: seconds each chunk of bytes waits before it is forwarded, either way: a slow
      or congested network.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._down = False
        self._closed = False
        self.delay = 0.0
        threading.Thread(target=self._accept, name="test-proxy", daemon=True).start()

    @property
    def down(self) -> bool:
        return self._down

    def cut(self) -> None:
        with self._lock:
            self._down = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        self._down = False

    def reset(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock, rst=True)

    def heal(self) -> None:
        """No fault left: connections go through, at full speed."""
        self.delay = 0.0
        self.restore()

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                if self._down:
                    _close(client)
                    _close(server)
                    continue
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                delay = self.delay
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(sock: socket.socket, rst: bool = False) -> None:
    # Shut down before closing: it wakes a pump thread blocked in recv() on this socket. Closing
    # alone would leave it blocked on the fd number, which the next connection may reuse: the
    # thread would then steal that connection's bytes (a reply lost, a client hung forever).
    try:
        if rst:  # SHUT_RD sends nothing; close() with SO_LINGER 0 then sends the RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
