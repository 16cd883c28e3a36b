"""A TCP proxy on loopback that a test can cut, reset, slow down and restore, to take a real
database away (or make its network misbehave) while a cache uses it.

Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
import threading
import time


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of one upstream server, with four faults.

    - `cut()`: closes every connection and refuses new ones (accepted and closed at once)
      until `restore()`: the server went away.
    - `reset()`: closes every connection with a TCP RST (SO_LINGER 0); new ones go through:
      a network blip, a server that dropped its clients.
    - `blackhole()`: until `restore()`, packets vanish both ways, as on a network that drops
      them: nothing is refused or closed, nothing is acknowledged, nothing comes back (Linux).
    - `delay`: seconds each chunk of bytes waits before it is forwarded, either way: a slow
      or congested network.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._clients: list[socket.socket] = []  # the client side of each connection
        self._lock = threading.Lock()
        self._down = False
        self._closed = False
        self._flowing = threading.Event()  # clear while black-holed
        self._flowing.set()
        self.delay = 0.0
        threading.Thread(target=self._accept, name="test-proxy", daemon=True).start()

    @property
    def down(self) -> bool:
        return self._down

    def cut(self) -> None:
        with self._lock:
            self._down = True
            sockets, self._sockets = self._sockets, []
            self._clients = []
        for sock in sockets:
            _close(sock)

    def blackhole(self) -> None:
        """Drops every packet a client sends (a socket filter discards it before TCP sees it,
        so the kernel acknowledges nothing: the client's data stays unacknowledged, its
        keepalive probes go unanswered, its new connections get no SYN-ACK) and forwards
        nothing back. Only a client-side timeout ends its wait, or `restore()`."""
        with self._lock:
            self._flowing.clear()
            for sock in (self._listener, *self._clients):
                _filter(sock, drop=True)

    def restore(self) -> None:
        self._down = False
        with self._lock:
            if not self._flowing.is_set():
                for sock in (self._listener, *self._clients):
                    _filter(sock, drop=False)
                self._flowing.set()

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
        self._flowing.set()  # pumps held by a black hole end too
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
                if self._flowing.is_set():
                    _filter(client, drop=False)  # a filter inherited from the listener
                self._sockets += [client, server]
                self._clients.append(client)
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
                self._flowing.wait()  # black-holed: held, then dropped with the connection
                if self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


_SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>
_SO_DETACH_FILTER = 27
_DROP_ALL = (ctypes.c_uint64 * 1)(
    int.from_bytes(struct.pack("=HBBI", 0x06, 0, 0, 0), sys.byteorder)  # BPF_RET|BPF_K 0: drop
)


def _filter(sock: socket.socket, drop: bool) -> None:
    """Attaches a classic BPF filter that drops every incoming packet of `sock` (inherited by
    the connections a listener accepts), or detaches it."""
    try:
        if drop:
            program = struct.pack("HL", 1, ctypes.addressof(_DROP_ALL))  # struct sock_fprog
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
        else:
            sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
    except OSError:
        pass  # closed meanwhile, or no filter to detach


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
