"""Slow and flooding clients against the HTTP endpoints: probes and a handler's pages are still answered.

The attacks are scripts/http_abuse.py's (run here as subprocesses, so their sockets are not this process's):
70 slowloris connections that never finish their request head, and a flood of 5,000 connections that send
nothing. Probes are kubelet's: a fresh connection each, ``GET /healthz``, a bound on the whole exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import resource
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import AsyncIterator, List

import pytest

from Listener.ops import http_server
from Listener.ops.http_endpoints import HttpEndpoints, start_http_endpoints

pytestmark = [pytest.mark.unit, pytest.mark.slow]

IO_TIMEOUT = 5.0
#: Each probe's bound: twice kubelet's 1 s, for a loaded 2-core machine (the old server failed probes with an
#: immediate 503 "busy", not with late answers, so the bound does not hide that failure).
PROBE_TIMEOUT = 2.0
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "http_abuse.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("http_abuse", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


abuse = _load_script()


@pytest.fixture
async def server() -> AsyncIterator[HttpEndpoints]:
    """Default limits, an always-ready listener, and a handler answering ``GET /`` (a dashboard's page)."""
    endpoints = await start_http_endpoints(abuse.AlwaysReady(), "127.0.0.1", 0, handler=abuse.dashboard)
    yield endpoints
    await endpoints.close()


@contextlib.asynccontextmanager
async def attacking(kind: str, port: int, count: int) -> AsyncIterator[None]:
    """The attacker subprocess, started and stopped off this loop (the listener's loop must stay free)."""
    attack = abuse.attacker(kind, port, count)
    await asyncio.to_thread(attack.__enter__)
    try:
        yield
    finally:
        await asyncio.to_thread(attack.__exit__, None, None, None)


async def test_probes_and_pages_are_answered_while_70_slowloris_connections_are_held(server: HttpEndpoints) -> None:
    async with attacking("slowloris", server.port, 70):
        probes = await asyncio.to_thread(abuse.run_probes, server.port, 40, timeout=PROBE_TIMEOUT)
        pages = await asyncio.to_thread(abuse.run_probes, server.port, 5, "/", timeout=PROBE_TIMEOUT)
    assert probes == [200] * 40
    assert pages == [200] * 5


async def test_probes_are_answered_during_a_flood_of_5000_silent_connections(server: HttpEndpoints) -> None:
    before = abuse.DescriptorPeak.count()
    async with attacking("flood", server.port, 5000):
        with abuse.DescriptorPeak() as descriptors:
            probes = await asyncio.to_thread(abuse.run_probes, server.port, 20, timeout=PROBE_TIMEOUT)
    assert probes == [200] * 20
    if before:  # where /proc/self/fd exists: the server holds max_connections and a few more, not the flood
        bound = http_server.MAX_CONNECTIONS + http_server.BUSY_CONNECTIONS + 2 * http_server.ACCEPT_BATCH + 8
        assert descriptors.peak - before <= bound, (before, descriptors.peak)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
async def test_out_of_descriptors_the_server_serves_again_once_some_are_freed(
        server: HttpEndpoints, caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE: accepting pauses (the client waits in the backlog) and resumes once descriptors are free."""
    client = socket.socket()  # made first: once the process is out of descriptors, no socket can be made
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: List[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        with contextlib.suppress(OSError):
            while len(fillers) < 1000:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with caplog.at_level(logging.WARNING, logger="Listener.http_endpoints"):
            client.settimeout(IO_TIMEOUT)
            await asyncio.to_thread(client.connect, ("127.0.0.1", server.port))
            await asyncio.to_thread(client.sendall, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            deadline = time.monotonic() + IO_TIMEOUT
            while not any("cannot accept" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert any("cannot accept" in r.getMessage() for r in caplog.records)
        for fd in fillers:
            os.close(fd)
        fillers.clear()
        response = await asyncio.to_thread(client.recv, 4096)
        assert response.startswith(b"HTTP/1.1 200 ")
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.close()
