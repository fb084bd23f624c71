"""Brokers this project did not write, for the interop tier: Mosquitto, amqtt's broker, Aedes and RabbitMQ's MQTT plugin.

Each broker is a separate OS process (in a process group of its own) on a free 127.0.0.1 port, accepting
anonymous clients. :meth:`InteropBroker.start` returns once the port accepts a connection and answers an MQTT
CONNECT with a CONNACK, never after a blind sleep. A broker can be stopped (SIGTERM), killed (SIGKILL) and
started again on the same port. Every broker not yet closed when the interpreter exits is killed, and its
folder removed, by an ``atexit`` hook.

What each broker really does differs; :class:`BrokerTraits` records it (the interop tests check every trait
against the running broker, so a new broker version that changes one fails a test instead of lying):

- ``mosquitto``: the Debian ``mosquitto`` binary (see :mod:`tests.support.brokers`).
- ``amqtt``: amqtt's ``Broker`` in ``python -m tests.support.amqtt_broker PORT``.
- ``aedes``: ``node tests/support/aedes/server.js PORT``; its ``node_modules`` come from ``npm ci``
  (``make interop-brokers`` runs it; :func:`unavailable` runs it too when they are missing).
- ``rabbitmq``: ``rabbitmq-server`` with the ``rabbitmq_mqtt`` plugin as an isolated node: its own node name,
  ports, data, logs, configuration, Erlang cookie and ``epmd``, all under the broker's folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, List, Optional

import pytest

from .brokers import BrokerEndpoint, MosquittoBroker, accepts_tcp, answers_connect, find_binary, free_port
from .leftovers import Leftovers

__all__ = [
    "AEDES_DIR", "AedesBroker", "AmqttBroker", "BrokerTraits", "InteropBroker", "KINDS", "MosquittoInterop",
    "RabbitMqBroker", "REQUIRED_VARIABLE", "make_broker", "require", "unavailable",
]

#: Every broker kind of the tier, in the order the tests run them.
KINDS = ("mosquitto", "amqtt", "aedes", "rabbitmq")
#: Set (to anything but "" or "0") by ``make test-interop``: a broker that cannot run fails its tests instead of
#: skipping them, so the tier cannot pass by running nothing.
REQUIRED_VARIABLE = "LISTENER_INTEROP_REQUIRED"
ROOT = Path(__file__).resolve().parents[2]
AEDES_DIR = Path(__file__).resolve().parent / "aedes"
#: The server script itself: the ``rabbitmq-server`` in sbin is Debian's wrapper, which switches to the rabbitmq
#: user and that user's files.
RABBITMQ_SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")

#: Brokers made and not yet closed: closed at interpreter exit.
_LIVE: "Leftovers[InteropBroker]" = Leftovers(lambda broker: broker.close())


@dataclass(frozen=True)
class BrokerTraits:
    """What a broker does, as observed (and checked by ``tests/interop/test_broker_traits.py``)."""

    #: ``$share/<group>/<filter>`` splits the matching messages among the group's subscribers.
    shared_subscriptions: bool
    #: Grants QoS 2 to a QoS 2 subscription and answers a QoS 2 PUBLISH with PUBREC (else: QoS 1 and PUBACK).
    qos2: bool
    #: Keeps a retained message for subscribers that come later.
    retained: bool
    #: Publishes a client's will when its connection ends without a DISCONNECT.
    will: bool
    #: A persistent session (clean session off) and the QoS 1 messages queued for it survive a broker restart.
    keeps_sessions: bool
    #: ... even a SIGKILL: what the broker acknowledged is on disk (RabbitMQ). Mosquitto saves its database from
    #: time to time, so messages on their way to a connected client at the kill are lost.
    queues_survive_kill: bool = False
    #: Delivers a message at the subscription's QoS even when it was published at a lower one (MQTT 3.1.1
    #: §3.8.4 asks for the lower of the two).
    upgrades_qos: bool = False
    #: Sends a connecting client the retained messages matching *any* client's subscription, at QoS 0, before it
    #: subscribes to anything; a later subscriber can then get a retained message twice.
    retained_on_connect: bool = False


class InteropBroker:
    """One broker process of the tier: ``host``, ``port``, ``kind``, ``traits``; start, stop, kill, restart, close."""

    kind: ClassVar[str]
    traits: BrokerTraits
    host: ClassVar[str] = "127.0.0.1"
    #: Seconds :meth:`start` waits for the first CONNACK.
    start_timeout: ClassVar[float] = 15.0
    #: Seconds :meth:`stop` waits after SIGTERM before it kills.
    stop_timeout: ClassVar[float] = 10.0

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self.log_path = folder / f"{self.kind}.log"
        self.starts = 0
        _LIVE.add(self)

    @property
    def endpoint(self) -> BrokerEndpoint:
        """Where clients connect (anonymous, plain TCP)."""
        return BrokerEndpoint(self.host, self.port)

    @property
    def is_running(self) -> bool:
        """True while the broker's process is alive."""
        return self.process is not None and self.process.poll() is None

    def _command(self) -> List[str]:
        raise NotImplementedError

    def _environment(self) -> Optional[Dict[str, str]]:
        return None

    def _cwd(self) -> Path:
        return ROOT

    def start(self) -> None:
        """Start the broker and wait until it accepts connections and answers CONNECT (RuntimeError if not)."""
        if self.is_running:
            raise RuntimeError(f"{self.kind} is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(self._command(), cwd=self._cwd(), env=self._environment(),  # noqa: S603
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        while not (accepts_tcp(self.port) and answers_connect(self.port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.kind} gave no CONNACK on 127.0.0.1:{self.port} within {self.start_timeout} s:"
                                   f"\n{self.log_tail()}")
            time.sleep(0.05)

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGTERM (the broker shuts down as it would in production), then SIGKILL after ``stop_timeout``."""
        if not self.is_running:
            return
        self._signal_group(signal.SIGTERM)
        try:
            assert self.process is not None
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the broker's whole process group: no goodbye to clients, nothing saved."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(10)
        else:
            self._signal_group(signal.SIGKILL)  # helpers it left behind in its group

    def restart(self, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL when ``hard``) and start again on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Kill the broker and remove its folder (idempotent)."""
        self.kill()
        _LIVE.discard(self)
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the broker's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
        except OSError:
            return "(no output)"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} 127.0.0.1:{self.port}>"


class MosquittoInterop(InteropBroker):
    """Mosquitto, through :class:`~tests.support.brokers.MosquittoBroker` (its anonymous listener only).

    With ``persistence`` it keeps sessions and their queued messages across a restart (``keeps_sessions``).
    """

    kind = "mosquitto"

    def __init__(self, folder: Path, persistence: bool = False) -> None:
        super().__init__(folder)
        self.broker = MosquittoBroker(folder / "mosquitto", persistence=persistence)
        self.port = self.broker.plain_port
        self.log_path = self.broker.log_path
        self.traits = BrokerTraits(shared_subscriptions=True, qos2=True, retained=True, will=True,
                                   keeps_sessions=persistence)

    @property
    def is_running(self) -> bool:
        return self.broker.is_running

    def start(self) -> None:
        self.broker.start()
        self.starts += 1

    def stop(self) -> None:
        self.broker.stop()

    def kill(self) -> None:
        self.broker.kill()

    def log_tail(self, lines: int = 40) -> str:
        return self.broker.log_tail(lines)


class AmqttBroker(InteropBroker):
    """amqtt's broker (the Python package this listener's client comes from) in a process of its own."""

    kind = "amqtt"
    traits = BrokerTraits(shared_subscriptions=False, qos2=True, retained=True, will=True,
                          keeps_sessions=False, upgrades_qos=True, retained_on_connect=True)

    def _command(self) -> List[str]:
        return [sys.executable, "-m", "tests.support.amqtt_broker", str(self.port)]


class AedesBroker(InteropBroker):
    """Aedes 0.51 (Node.js) with its in-memory persistence: ``node tests/support/aedes/server.js PORT``."""

    kind = "aedes"
    traits = BrokerTraits(shared_subscriptions=False, qos2=True, retained=True, will=True,
                          keeps_sessions=False)

    def _command(self) -> List[str]:
        node = _node_binary()
        if node is None:
            raise RuntimeError("node is not installed (apt-get install -y nodejs)")
        return [node, "server.js", str(self.port)]

    def _cwd(self) -> Path:
        return AEDES_DIR


class RabbitMqBroker(InteropBroker):
    """``rabbitmq-server`` with ``rabbitmq_mqtt`` as a node of its own, isolated from any other on the machine.

    Node name ``listener-tests-<random>@localhost``; AMQP, Erlang distribution, MQTT and ``epmd`` ports all free
    loopback ports; data (``mnesia``), logs, ``rabbitmq.conf``, ``enabled_plugins``, an empty
    ``rabbitmq-env.conf`` (the machine's ``/etc/rabbitmq`` is never read) and ``HOME`` with its Erlang cookie
    under the broker's folder. The node registers with an ``epmd`` of its own (started here, killed by
    :meth:`close`), so an ``epmd`` left on the default port by anything else neither serves nor hinders it.
    A restart keeps the node's data: durable sessions, their queued QoS 1 messages and retained messages survive.
    """

    kind = "rabbitmq"
    start_timeout = 60.0  # a new node creates its database and enables its plugin first: about 10 s here
    stop_timeout = 30.0
    traits = BrokerTraits(shared_subscriptions=False, qos2=False, retained=True, will=True,
                          keeps_sessions=True, queues_survive_kill=True)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.node_name = f"listener-tests-{uuid.uuid4().hex[:10]}@localhost"
        self.amqp_port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.epmd: Optional["subprocess.Popen[bytes]"] = None
        home = folder / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper(), encoding="ascii")
        cookie.chmod(0o400)
        (folder / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="ascii")
        (folder / "rabbitmq-env.conf").write_text("", encoding="ascii")
        (folder / "rabbitmq.conf").write_text("\n".join([
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}",
            "mqtt.allow_anonymous = true",
            "log.console = true",
            "log.file = false",
            "",
        ]), encoding="ascii")

    def _command(self) -> List[str]:
        script = _rabbitmq_script()
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed (apt-get install -y rabbitmq-server)")
        return [script]

    def _environment(self) -> Dict[str, str]:
        environment = {name: value for name, value in os.environ.items()
                       if not name.startswith(("RABBITMQ_", "ERL_"))}
        environment.update({
            "HOME": str(self.folder / "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
        })
        return environment

    def start(self) -> None:
        self._start_epmd()
        super().start()

    def _start_epmd(self) -> None:
        if self.epmd is not None and self.epmd.poll() is None:
            return
        epmd = find_binary("epmd")
        if epmd is None:
            raise RuntimeError("epmd is not installed (it comes with rabbitmq-server's erlang-base)")
        with open(self.folder / "epmd.log", "ab") as log:
            self.epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],  # noqa: S603
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 10
        while not accepts_tcp(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.02)

    def close(self) -> None:
        super().close()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(5)


def _node_binary() -> Optional[str]:
    return find_binary("node") or find_binary("nodejs")


def _rabbitmq_script() -> Optional[str]:
    if RABBITMQ_SERVER_SCRIPT.is_file():
        return str(RABBITMQ_SERVER_SCRIPT)
    return find_binary("rabbitmq-server")


def _install_aedes() -> Optional[str]:
    """``npm ci`` in the aedes folder when its ``node_modules`` is missing; the reason it failed, else None."""
    if (AEDES_DIR / "node_modules" / "aedes").is_dir():
        return None
    npm = find_binary("npm")
    if npm is None:
        return "npm is not installed (apt-get install -y npm), so aedes cannot be installed"
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=AEDES_DIR, capture_output=True,  # noqa: S603
                          text=True, timeout=300)
    if done.returncode != 0:
        return f"npm ci for aedes failed: {(done.stderr or done.stdout)[-500:]}"
    return None


def unavailable(kind: str) -> Optional[str]:
    """Why ``kind`` cannot run on this machine (what is missing), or None when it can."""
    if kind == "mosquitto":
        return None if find_binary("mosquitto") else "mosquitto is not installed (make interop-brokers installs it)"
    if kind == "amqtt":
        return None
    if kind == "aedes":
        if _node_binary() is None:
            return "node is not installed (make interop-brokers installs nodejs)"
        return _install_aedes()
    if kind == "rabbitmq":
        if _rabbitmq_script() is None:
            return "rabbitmq-server is not installed (make interop-brokers installs it)"
        if find_binary("epmd") is None:
            return "epmd is not installed (it comes with rabbitmq-server)"
        return None
    raise ValueError(f"unknown broker kind {kind!r}; expected one of {', '.join(KINDS)}")


def require(kind: str) -> None:
    """Skip the test when ``kind`` cannot run here, with the reason; fail instead under ``make test-interop``."""
    reason = unavailable(kind)
    if reason is None:
        return
    if os.getenv(REQUIRED_VARIABLE, "") not in ("", "0"):
        pytest.fail(f"{kind}: {reason} ({REQUIRED_VARIABLE} is set)")
    pytest.skip(f"{kind}: {reason}")


def make_broker(kind: str, folder: Path, persistence: bool = False) -> InteropBroker:
    """A broker of ``kind`` in ``folder`` (one of its own, that others may read: mosquitto started as root reads
    its files as its own user; see :func:`~tests.support.brokers.session_folder`), not started yet.

    ``persistence`` is for mosquitto; the others keep what their :class:`BrokerTraits` say whatever it is.
    :meth:`InteropBroker.close` removes ``folder``.
    """
    if kind == "mosquitto":
        return MosquittoInterop(folder, persistence=persistence)
    brokers = {"amqtt": AmqttBroker, "aedes": AedesBroker, "rabbitmq": RabbitMqBroker}
    try:
        return brokers[kind](folder)
    except KeyError:
        raise ValueError(f"unknown broker kind {kind!r}; expected one of {', '.join(KINDS)}") from None
