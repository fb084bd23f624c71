"""The fault-injection TCP proxy (tests/support/proxy.py) against a small echo server."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator, List

import pytest

from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.timeout(30)


class EchoServer:
    """A thread-per-connection TCP echo server on a free loopback port."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._conns: List[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), so the port really closes
        except OSError:
            pass
        self._sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo.port) as running:
        yield running


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
    return sock


def assert_reset(proxy: TcpProxy) -> None:
    """A new connection through ``proxy`` is reset (while connecting, writing or reading)."""
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        with connect(proxy) as sock:
            sock.sendall(b"x")
            sock.recv(100)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        big = bytes(range(256)) * 4096  # 1 MiB
        assert roundtrip(sock, big) == big
    proxy.wait_for_accepted(1, 5)
    # The counter moves just after each send(): the echo can reach the client a moment before it does.
    deadline = time.monotonic() + 5
    while proxy.bytes_forwarded < 2 * (5 + len(big)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.bytes_forwarded >= 2 * (5 + len(big))


def test_freeze_black_holes_without_closing_and_thaw_delivers(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.freeze()
        sock.sendall(b"during")  # the write succeeds: the socket is open
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(100)  # ... but nothing ever comes back, and no FIN or RST either
        assert proxy.active_connections == 1
        proxy.thaw()
        sock.settimeout(5)
        assert sock.recv(100) == b"during"


def test_new_connection_while_frozen_is_a_black_hole_too(proxy: TcpProxy) -> None:
    proxy.freeze()
    with connect(proxy) as sock:
        sock.sendall(b"x")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(100)
        proxy.thaw()
        sock.settimeout(5)
        assert sock.recv(100) == b"x"


def test_cut_resets_the_connection_and_new_ones_are_accepted(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"one") == b"one"
        proxy.cut()
        assert proxy.active_connections == 0
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    with connect(proxy) as again:
        assert roundtrip(again, b"two") == b"two"
    assert proxy.accepted == 2


def test_refuse_resets_new_connections_until_admit(proxy: TcpProxy) -> None:
    proxy.refuse()
    assert_reset(proxy)
    assert_reset(proxy)
    assert proxy.accepted == 0
    proxy.admit()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"back") == b"back"


def test_server_down_means_the_proxied_connection_is_reset(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        echo.close()
        assert_reset(proxy)


def test_close_is_idempotent_and_stops_listening(echo: EchoServer) -> None:
    proxy = TcpProxy("127.0.0.1", echo.port).start()
    port = proxy.port
    sock = connect(proxy)
    proxy.close()
    proxy.close()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        sock.sendall(b"x")
        sock.recv(100)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(RuntimeError):
        proxy.freeze()
