"""Measure what slow and flooding clients do to the HTTP endpoints' probes (Listener.ops.http_endpoints).

Starts the endpoints on a free loopback port for a fake listener that is always ready, then, each in turn:

- ``slowloris``: 70 connections each send a partial request head, then one more byte every 0.5 s, never
  finishing (a dropped one reconnects), while 40 kubelet-style probes run: a fresh connection each,
  ``GET /healthz``, 1 s for the whole exchange, 50 ms apart. With a module that takes a request handler, 10
  ``GET /`` answered by a handler (what a dashboard does) are sent under the same attack.
- ``flood``: connections that connect and send nothing, 5,000 held open at once (then reset and opened again)
  as fast as one process can, while 20 probes run.

The attackers run in subprocesses (this script again, with ``--attacker``), so their sockets and CPU are
their own. Prints how many probes answered 200; it reports, it never fails.

    python scripts/http_abuse.py
    python scripts/http_abuse.py --module /tmp/http_endpoints_before.py   # another version of the module
    git show HEAD:Listener/ops/http_endpoints.py > /tmp/before.py && python scripts/http_abuse.py --module /tmp/before.py

``--module`` loads that file as a module of ``Listener.ops`` (its relative imports resolve there).
The functions are used by tests/unit/test_http_abuse.py too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib
import importlib.util
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
SLOWLORIS_CONNECTIONS = 70
SLOWLORIS_PROBES = 40
FLOOD_CONNECTIONS = 5000
FLOOD_PROBES = 20
PROBE_TIMEOUT = 1.0
PROBE_INTERVAL = 0.05
DRIP_INTERVAL = 0.5
READY_TIMEOUT = 30.0


# -- the probes (a thread of the measuring process) ---------------------------------------------------


def probe(port: int, path: str = "/healthz", timeout: float = PROBE_TIMEOUT, host: str = HOST) -> int:
    """One kubelet-style probe: a fresh connection, one GET, the whole exchange within ``timeout``.

    Returns the status code, or 0 when the connection failed, was reset, or the answer was late.
    """
    deadline = time.monotonic() + timeout
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.29\r\nAccept: */*\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            response = b""
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                response += chunk
            else:
                return 0
    except OSError:
        return 0
    status_line = response.split(b"\r\n", 1)[0].split()
    return int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else 0


def run_probes(port: int, count: int, path: str = "/healthz", interval: float = PROBE_INTERVAL,
               timeout: float = PROBE_TIMEOUT) -> List[int]:
    """``count`` probes one after the other, ``interval`` apart; their statuses (0: no answer in time)."""
    statuses = []
    for _ in range(count):
        statuses.append(probe(port, path, timeout))
        time.sleep(interval)
    return statuses


class DescriptorPeak:
    """The most descriptors this process had open while the ``with`` block ran (sampled every 5 ms; Linux)."""

    def __init__(self) -> None:
        self.peak = self.count()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def count() -> int:
        """Descriptors open now (0 where /proc/self/fd does not exist)."""
        try:
            return len(os.listdir("/proc/self/fd"))
        except OSError:
            return 0

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self.count())

    def __enter__(self) -> "DescriptorPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join(READY_TIMEOUT)


# -- the attackers (subprocesses) -----------------------------------------------------------------------


async def _slowloris(port: int, count: int) -> None:
    """``count`` connections that never finish their request head; a dropped one reconnects."""
    connected = 0
    ready = asyncio.Event()

    async def one() -> None:
        nonlocal connected
        first = True
        while True:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(DRIP_INTERVAL)
                continue
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: victim\r\nX-Padding: ")
                await writer.drain()
                if first:
                    first, connected = False, connected + 1
                    if connected == count:
                        ready.set()
                while True:
                    try:
                        await asyncio.wait_for(reader.read(4096), DRIP_INTERVAL)
                        break  # answered (408) or closed: start over
                    except asyncio.TimeoutError:
                        writer.write(b"a")
                        await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    await asyncio.wait_for(ready.wait(), READY_TIMEOUT)
    print("ready", flush=True)
    await asyncio.gather(*tasks)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _flood(port: int, count: int) -> None:
    """Connect ``count`` sockets that send nothing, as fast as possible; reset them all; again, until killed."""
    _raise_fd_limit(count + 256)
    reset = struct.pack("ii", 1, 0)  # SO_LINGER 0: close with a reset, so no TIME_WAIT eats the local ports
    announced = False
    while True:
        held: List[socket.socket] = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
            sock.settimeout(PROBE_TIMEOUT)
            try:
                sock.connect((HOST, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if not announced:
                announced = True
                print("ready", flush=True)
        for sock in held:
            sock.close()


@contextlib.contextmanager
def attacker(kind: str, port: int, count: int) -> Iterator[subprocess.Popen[bytes]]:
    """This script as an attacking subprocess (``slowloris`` or ``flood``), once it has started; killed on exit."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--attacker", kind,
                                "--port", str(port), "--count", str(count)],
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), True)
        line = _readline_within(process, READY_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"the {kind} attacker did not start (said {line!r})")
        yield process
    finally:
        process.kill()
        process.wait(READY_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


def _readline_within(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The attacker's first line, or b"" when it says nothing within ``timeout`` (the attacker is then killed)."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return b""
    return process.stdout.readline()


# -- the measurement -------------------------------------------------------------------------------------


class AlwaysReady:
    """A ListenerStatus that is connected, subscribed and not draining."""

    is_ready = True
    is_draining = False
    is_running = True

    def metrics(self) -> Dict[str, Any]:
        return {"ready": True}


async def dashboard(request: Any) -> Optional[Any]:
    """A request handler answering ``GET /`` as a dashboard would; everything else falls through."""
    if request.path == "/":
        return 200, "text/html; charset=utf-8", b"<!doctype html><title>dashboard</title>\n", {}
    return None


def load(path: Optional[str]) -> ModuleType:
    """The endpoints module: the package's, or the file at ``path`` loaded as a module of ``Listener.ops``."""
    if path is None:
        return importlib.import_module("Listener.ops.http_endpoints")
    importlib.import_module("Listener.ops")
    spec = importlib.util.spec_from_file_location("Listener.ops._http_endpoints_measured", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def summary(name: str, statuses: Sequence[int]) -> str:
    counts = collections.Counter(statuses)
    detail = ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(counts.items()))
    return f"{name}: {counts[200]}/{len(statuses)} answered 200 ({detail})"


async def measure(module: ModuleType) -> None:
    takes_handler = hasattr(module, "HttpRequest")
    options = {"handler": dashboard} if takes_handler else {}
    endpoints = await module.start_http_endpoints(AlwaysReady(), HOST, 0, **options)
    try:
        with attacker("slowloris", endpoints.port, SLOWLORIS_CONNECTIONS):
            statuses = await asyncio.to_thread(run_probes, endpoints.port, SLOWLORIS_PROBES)
            print(summary(f"{SLOWLORIS_CONNECTIONS} slowloris connections, probes of /healthz", statuses))
            if takes_handler:
                pages = await asyncio.to_thread(run_probes, endpoints.port, 10, "/")
                print(summary(f"{SLOWLORIS_CONNECTIONS} slowloris connections, GET / answered by a handler", pages))
        before = DescriptorPeak.count()
        with attacker("flood", endpoints.port, FLOOD_CONNECTIONS), DescriptorPeak() as descriptors:
            statuses = await asyncio.to_thread(run_probes, endpoints.port, FLOOD_PROBES)
        print(summary(f"flood of {FLOOD_CONNECTIONS} silent connections, probes of /healthz", statuses))
        print(f"descriptors open in the server's process during the flood: at most {descriptors.peak} "
              f"({before} before it)")
    finally:
        await endpoints.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", help="the http_endpoints.py file to measure (default: the package's)")
    parser.add_argument("--attacker", choices=["slowloris", "flood"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attacker == "slowloris":
        asyncio.run(_slowloris(args.port, args.count))
    elif args.attacker == "flood":
        _flood(args.port, args.count)
    else:
        asyncio.run(measure(load(args.module)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
