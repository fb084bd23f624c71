"""A TCP proxy the test owns, placed between a client (the listener) and a server (the broker).

It injects network faults the client cannot tell from the real thing:

- :meth:`TcpProxy.freeze` stops forwarding bytes in both directions but keeps every socket open, so the
  connection becomes a black hole (a half-open connection: writes succeed, nothing ever comes back).
  Connections accepted while frozen are black holes too. :meth:`TcpProxy.thaw` resumes forwarding.
- :meth:`TcpProxy.cut` resets every current connection (``SO_LINGER`` 0, then close), so both peers see
  ``ECONNRESET``; new connections are still accepted afterwards.
- :meth:`TcpProxy.refuse` resets every new connection as soon as it is accepted (the server looks down
  while it is really up); :meth:`TcpProxy.admit` undoes it.

One daemon thread runs a ``selectors`` loop; the public methods hand their work to that thread and
return once it is done, so after ``cut()`` returns the connections really are gone.
"""

from __future__ import annotations

import queue
import selectors
import socket
import struct
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["TcpProxy"]

_CHUNK = 65536
_BUFFER_LIMIT = 4 * 1024 * 1024  # stop reading a side while this much is waiting to be written to the other
_COMMAND_TIMEOUT = 10.0


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` so that the peer sees a connection reset (RST), not an orderly FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Pair:
    """One proxied connection: the accepted client socket and the socket to the upstream server."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        # Bytes waiting to be written *to* each socket.
        self.pending: Dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}
        self.masks: Dict[socket.socket, int] = {client: 0, upstream: 0}

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def sockets(self) -> Tuple[socket.socket, socket.socket]:
        return self.client, self.upstream


class TcpProxy:
    """Forward TCP connections from ``host:port`` (a free loopback port by default) to ``target``.

    Args:
        target_host: the server to forward to.
        target_port: its port.
        listen_host: the address to listen on (loopback by default).
        listen_port: the port to listen on (0 = any free port; see :attr:`port`).
        connect_timeout: seconds to wait when opening the upstream connection.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 connect_timeout: float = 2.0) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, listen_port))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.host: str = self._listener.getsockname()[0]
        self.port: int = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: "queue.Queue[Tuple[Callable[[], None], threading.Event]]" = queue.Queue()
        self._pairs: List[_Pair] = []
        self._frozen = False
        self._refusing = False
        self._closed = False
        self._accepted = 0
        self._forwarded = 0
        self._counter_lock = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> "TcpProxy":
        """Start forwarding (idempotent)."""
        if self._thread is None:
            self._selector.register(self._listener, selectors.EVENT_READ, "accept")
            self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._thread = threading.Thread(target=self._loop, name=f"tcp-proxy-{self.port}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Reset every connection, stop listening and stop the thread (idempotent)."""
        if self._closed:
            return
        if self._thread is not None and self._thread.is_alive():
            self._call(self._shutdown)
            self._thread.join(_COMMAND_TIMEOUT)
        else:
            self._shutdown()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults --------------------------------------------------------------------------------------

    def freeze(self) -> None:
        """Stop forwarding in both directions; sockets stay open (a black hole, no FIN, no RST)."""
        self._call(lambda: setattr(self, "_frozen", True))

    def thaw(self) -> None:
        """Forward again, including whatever was buffered while frozen."""
        self._call(lambda: setattr(self, "_frozen", False))

    def cut(self) -> None:
        """Reset every current connection (both peers see ECONNRESET); new connections are still accepted."""
        self._call(self._reset_all)

    def refuse(self) -> None:
        """Reset current connections and every new one as soon as it is accepted, until :meth:`admit`."""
        def go() -> None:
            self._refusing = True
            self._reset_all()
        self._call(go)

    def admit(self) -> None:
        """Accept and forward new connections again (after :meth:`refuse`)."""
        self._call(lambda: setattr(self, "_refusing", False))

    # -- observation ---------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        """True between :meth:`freeze` and :meth:`thaw`."""
        return self._frozen

    @property
    def accepted(self) -> int:
        """How many connections were forwarded upstream since the start (refused ones excluded)."""
        with self._counter_lock:
            return self._accepted

    @property
    def bytes_forwarded(self) -> int:
        """Bytes written to either side since the start."""
        with self._counter_lock:
            return self._forwarded

    @property
    def active_connections(self) -> int:
        """Connections open right now."""
        return len(self._pairs)

    def wait_for_accepted(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` connections have been forwarded; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._counter_lock:
            while self._accepted < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"proxy saw {self._accepted} connections, expected {count} within {timeout} s")
                self._counter_lock.wait(remaining)

    # -- the thread ----------------------------------------------------------------------------------

    def _call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the proxy thread and wait for it."""
        if self._closed:
            raise RuntimeError("proxy is closed")
        if self._thread is None or threading.current_thread() is self._thread:
            action()
            return
        done = threading.Event()
        self._commands.put((action, done))
        self._wake_w.send(b"x")
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError("proxy thread did not answer")

    def _loop(self) -> None:
        while not self._closed:
            for key, mask in self._selector.select(1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._run_commands()
                else:
                    pair: _Pair = key.data
                    if pair in self._pairs:
                        self._service(pair, key.fileobj, mask)  # type: ignore[arg-type]
                if self._closed:
                    return
            self._update_interest()

    def _run_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                action, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            finally:
                done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._refusing:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            _reset(client)  # the server is down: so is the proxied connection
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs.append(_Pair(client, upstream))
        with self._counter_lock:
            self._accepted += 1
            self._counter_lock.notify_all()

    def _service(self, pair: _Pair, sock: socket.socket, mask: int) -> None:
        if self._frozen:
            return  # frozen in the middle of a batch of events: not one more byte
        try:
            if mask & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if not data:
                    self._close_pair(pair, reset=False)
                    return
                pair.pending[pair.peer(sock)] += data
            if mask & selectors.EVENT_WRITE and pair.pending[sock]:
                sent = sock.send(pair.pending[sock])
                del pair.pending[sock][:sent]
                with self._counter_lock:
                    self._forwarded += sent
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_pair(pair, reset=True)  # one side was reset: reset the other too

    def _update_interest(self) -> None:
        for pair in list(self._pairs):
            for sock in pair.sockets():
                wanted = 0
                if not self._frozen:
                    if len(pair.pending[pair.peer(sock)]) < _BUFFER_LIMIT:
                        wanted |= selectors.EVENT_READ
                    if pair.pending[sock]:
                        wanted |= selectors.EVENT_WRITE
                current = pair.masks[sock]
                if wanted == current:
                    continue
                if current == 0:
                    self._selector.register(sock, wanted, pair)
                elif wanted == 0:
                    self._selector.unregister(sock)
                else:
                    self._selector.modify(sock, wanted, pair)
                pair.masks[sock] = wanted

    def _close_pair(self, pair: _Pair, reset: bool) -> None:
        if pair not in self._pairs:
            return
        self._pairs.remove(pair)
        for sock in pair.sockets():
            if pair.masks[sock]:
                self._selector.unregister(sock)
                pair.masks[sock] = 0
            if reset:
                _reset(sock)
            else:
                try:
                    # Best effort: deliver what is already buffered for this side before the FIN.
                    if pair.pending[sock]:
                        sock.setblocking(True)
                        sock.settimeout(0.5)
                        sock.sendall(pair.pending[sock])
                except OSError:
                    pass
                sock.close()

    def _reset_all(self) -> None:
        for pair in list(self._pairs):
            self._close_pair(pair, reset=True)

    def _shutdown(self) -> None:
        self._reset_all()
        self._closed = True
        try:
            self._selector.unregister(self._listener)
        except (KeyError, ValueError):
            pass
        self._listener.close()
        self._selector.close()
