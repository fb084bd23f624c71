"""Real Mosquitto brokers for the tests: plain, password-file and TLS listeners on free loopback ports.

One ``mosquitto`` process serves three listeners (``per_listener_settings true``). Certificates are made
with the ``openssl`` command line for each test session. Readiness is awaited (TCP accept plus an MQTT
CONNACK), never slept for.

``broker_factory`` (a pytest fixture, re-exported by ``tests/mqtt/conftest.py``; other test packages import
it from here) gives a test private brokers it may kill and restart on the same ports. Every broker still
running when the interpreter exits is killed by an ``atexit`` hook, whatever happened to the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from .leftovers import Leftovers

__all__ = [
    "BrokerEndpoint", "BrokerFactory", "MosquittoBroker", "MqttProbe", "TlsMaterial", "accepts_tcp", "answers_connect",
    "broker_factory", "find_binary", "free_port", "generate_tls_material", "session_folder",
]

START_TIMEOUT = 10.0
#: Brokers started and not yet stopped: killed at interpreter exit.
_LIVE_BROKERS: "Leftovers[MosquittoBroker]" = Leftovers(lambda broker: broker.kill())


def find_binary(name: str) -> Optional[str]:
    """``name`` on PATH or in the sbin folders Debian installs brokers into."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the certificates and keys made for a test session."""

    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca_cert: str
    capath_dir: str

    def ca_pem(self) -> str:
        """The CA certificate as PEM text (for ``cadata``)."""
        return Path(self.ca_cert).read_text(encoding="ascii")


def _openssl(*args: str) -> str:
    result = subprocess.run(["openssl", *args], check=True, capture_output=True, text=True)  # noqa: S603
    return result.stdout


def _make_ca(folder: Path, name: str) -> tuple[str, str]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return str(cert), str(key)


def _make_leaf(folder: Path, name: str, ca_cert: str, ca_key: str, extensions: str) -> tuple[str, str]:
    key, csr, cert, ext = (folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt",
                           folder / f"{name}.ext")
    ext.write_text(extensions, encoding="ascii")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
             "-out", str(cert), "-extfile", str(ext))
    return str(cert), str(key)


def generate_tls_material(folder: Path) -> TlsMaterial:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, an unrelated CA, a capath dir."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca(folder, "test-ca")
    server_cert, server_key = _make_leaf(folder, "localhost", ca_cert, ca_key,
                                         "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client_cert, client_key = _make_leaf(folder, "test-client", ca_cert, ca_key, "extendedKeyUsage=clientAuth\n")
    other_ca_cert, _ = _make_ca(folder, "other-ca")
    capath = folder / "capath"
    capath.mkdir(exist_ok=True)
    subject_hash = _openssl("x509", "-hash", "-noout", "-in", ca_cert).strip()
    shutil.copyfile(ca_cert, capath / f"{subject_hash}.0")
    return TlsMaterial(ca_cert, ca_key, server_cert, server_key, client_cert, client_key, other_ca_cert, str(capath))


@dataclass(frozen=True)
class BrokerEndpoint:
    """How to reach one broker listener."""

    host: str
    port: int
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False
    cafile: Optional[str] = None


#: The broker configuration docker-compose.yml mounts; every test broker starts from it.
COMPOSE_MOSQUITTO_CONFIG = Path(__file__).resolve().parents[2] / "docker" / "mosquitto" / "mosquitto.conf"
#: Its password file (user/password and test/test).
COMPOSE_PASSWORD_FILE = COMPOSE_MOSQUITTO_CONFIG.with_name("passwords")
# Lines of the compose configuration the tests set themselves (files, logging, persistence).
_REPLACED_OPTIONS = ("persistence", "persistence_location", "persistence_file", "log_dest", "log_type")


def adapt_compose_config(text: str, settings: List[str], ports: Dict[int, int], password_file: Path) -> List[str]:
    """The compose broker's configuration for a test broker: its listeners moved to ``ports`` on 127.0.0.1, its
    ``password_file`` replaced, and its persistence and logging options replaced by ``settings``.

    Raises RuntimeError when a port of ``ports`` has no listener in ``text`` (the two would have drifted apart).
    """
    head: List[str] = []
    body: List[str] = []
    seen = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        option, _, value = line.partition(" ")
        if option in _REPLACED_OPTIONS:
            continue
        if option == "listener":
            port = int(value.split()[0])
            if port not in ports:
                raise RuntimeError(f"{COMPOSE_MOSQUITTO_CONFIG.name}: no test port for its listener {port}")
            seen.add(port)
            line = f"listener {ports[port]} 127.0.0.1"
        elif option == "password_file":
            line = f"password_file {password_file}"
        (body if body or option == "listener" else head).append(line)
    missing = sorted(set(ports) - seen)
    if missing:
        raise RuntimeError(f"{COMPOSE_MOSQUITTO_CONFIG.name} has no listener on port(s) {missing}")
    return head + settings + body


def _mqtt_connect_packet(client_id: str) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT (clean session, keep-alive 10 s, no credentials)."""
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id.encode()
    return b"\x10" + bytes([len(body)]) + body


def accepts_tcp(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts a TCP connection on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def answers_connect(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` answers an MQTT CONNECT with a CONNACK that accepts the connection."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(_mqtt_connect_packet("readiness-probe"))
            connack = sock.recv(4)
            return connack[:1] == b"\x20" and connack[3:4] == b"\x00"
    except OSError:
        return False


@dataclass
class MosquittoBroker:
    """One mosquitto process with a plain anonymous, a password-file and (optionally) a TLS listener.

    With ``persistence`` the broker keeps its database (``mosquitto.db`` in ``folder``) across restarts and
    saves it after every change (``autosave_on_changes`` with ``autosave_interval 1``), so persistent sessions,
    their subscriptions and the QoS 1/2 messages queued for them survive even a SIGKILL as far as mosquitto
    can make them: a change made in the instant before the kill may still be lost; a SIGTERM (``stop()``)
    always saves everything.

    ``password_file``: a ``mosquitto_passwd`` file to use as it is (e.g. :data:`COMPOSE_PASSWORD_FILE`, whose
    accounts are user/password and test/test; give ``username``/``password`` one of them), instead of a new
    one made for ``username``/``password``.

    ``max_packet_size`` (bytes): mosquitto disconnects a client that sends a bigger packet.
    ``max_inflight`` sets ``max_inflight_messages`` (QoS 1/2 messages sent to a client and not yet
    acknowledged; mosquitto's default is 20, 0 means no limit); ``max_queued`` sets ``max_queued_messages``
    (the compose configuration's 0, no limit, otherwise).
    """

    folder: Path
    username: str = "listener"
    password: str = field(default_factory=lambda: "pw-" + os.urandom(8).hex())
    tls: Optional[TlsMaterial] = None
    persistence: bool = False
    max_packet_size: Optional[int] = None
    max_inflight: Optional[int] = None
    max_queued: Optional[int] = None
    password_file: Optional[Path] = None
    plain_port: int = field(default_factory=free_port)
    auth_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    process: Optional["subprocess.Popen[bytes]"] = None

    def __post_init__(self) -> None:
        binary = find_binary("mosquitto")
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.binary = binary
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o777)  # mosquitto started as root drops to its own user and must read these files
        self.log_path = self.folder / "mosquitto.log"
        self.config_path = self.folder / "mosquitto.conf"
        self._write_password_file()
        self._write_config()

    @property
    def port(self) -> int:
        """The plain (anonymous) listener's port; it stays the same across restarts."""
        return self.plain_port

    @property
    def plain(self) -> BrokerEndpoint:
        return BrokerEndpoint("127.0.0.1", self.plain_port)

    @property
    def is_running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def auth(self) -> BrokerEndpoint:
        return BrokerEndpoint("127.0.0.1", self.auth_port, self.username, self.password)

    @property
    def secure(self) -> BrokerEndpoint:
        assert self.tls is not None, "broker started without TLS material"
        return BrokerEndpoint("localhost", self.tls_port, tls=True, cafile=self.tls.ca_cert)

    def _write_password_file(self) -> None:
        self.password_path = self.folder / "passwords"
        if self.password_file is not None:
            shutil.copyfile(self.password_file, self.password_path)
            self.password_path.chmod(0o644)
            return
        passwd = find_binary("mosquitto_passwd")
        if passwd is None:
            raise RuntimeError("mosquitto_passwd is not installed (it ships with the mosquitto package)")
        subprocess.run([passwd, "-b", "-c", str(self.password_path), self.username, self.password],  # noqa: S603
                       check=True, capture_output=True)
        self.password_path.chmod(0o644)

    def _write_config(self) -> None:
        lines = [
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.folder}/",
            "persistence_file mosquitto.db",
        ]
        if self.persistence:
            # Save after every change (subscriptions, retained and queued messages), not every 30 minutes.
            lines += ["autosave_on_changes true", "autosave_interval 1"]
        lines += [
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
        ]
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {int(self.max_packet_size)}")
        if self.max_inflight is not None:
            lines.append(f"max_inflight_messages {int(self.max_inflight)}")
        lines = adapt_compose_config(COMPOSE_MOSQUITTO_CONFIG.read_text(encoding="utf-8"), lines,
                                     {1883: self.plain_port, 1884: self.auth_port}, self.password_path)
        if self.max_queued is not None:
            lines = [line for line in lines if not line.startswith("max_queued_messages ")]
            lines.insert(0, f"max_queued_messages {int(self.max_queued)}")
        if self.tls is not None:
            for path in (self.tls.server_key, self.tls.ca_key, self.tls.client_key):
                Path(path).chmod(0o644)
            lines += [f"listener {self.tls_port} 127.0.0.1", "allow_anonymous true", f"cafile {self.tls.ca_cert}",
                      f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}"]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="ascii")

    def _ports(self) -> List[int]:
        return [self.plain_port, self.auth_port] + ([self.tls_port] if self.tls else [])

    def start(self) -> None:
        """Start mosquitto and wait until every listener accepts connections (and answers CONNECT)."""
        if self.is_running:
            raise RuntimeError("mosquitto is already running")
        with open(self.folder / "mosquitto.stderr", "ab") as stderr:
            self.process = subprocess.Popen([self.binary, "-c", str(self.config_path)],  # noqa: S603
                                            stdout=subprocess.DEVNULL, stderr=stderr)
        _LIVE_BROKERS.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self._ports():
            while not self._accepts(port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"mosquitto did not start on port {port}:\n{self.log_tail()}")
                time.sleep(0.02)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._connack(self.plain_port):
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto gives no CONNACK:\n{self.log_tail()}")
            time.sleep(0.02)

    @staticmethod
    def _accepts(port: int) -> bool:
        return accepts_tcp(port)

    @staticmethod
    def _connack(port: int) -> bool:
        return answers_connect(port)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its database and exits), then SIGKILL if it has not exited within 5 s."""
        if self.process is None or self.process.poll() is not None:
            self._forget()
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, and whatever was not saved yet is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._forget()

    def restart(self, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL when ``hard``) and start again on the same ports."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def _forget(self) -> None:
        _LIVE_BROKERS.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the broker's log (and of its stderr, where start-up errors go)."""
        text = []
        for path in (self.log_path, self.folder / "mosquitto.stderr"):
            try:
                text += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(text) or "(no log)"

    def __enter__(self) -> "MosquittoBroker":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class MqttProbe:
    """An independent paho-mqtt client: publishes, and collects what arrives on its subscriptions.

    It survives broker restarts: paho's network thread reconnects by itself (within a second), and every
    subscription made with :meth:`subscribe` is renewed on each reconnect. :meth:`wait_until_connected`
    waits until that is done; :meth:`publish` waits for it too before sending.

    Args:
        endpoint: where to connect.
        client_id: the MQTT client id (random when omitted).
        clean_session: False keeps a persistent session on the broker (use a fixed ``client_id``).
    """

    def __init__(self, endpoint: BrokerEndpoint, client_id: Optional[str] = None, clean_session: bool = True) -> None:
        import paho.mqtt.client as mqtt

        self.endpoint = endpoint
        self._messages: List[Any] = []
        self._condition = threading.Condition()
        self._subscriptions: Dict[str, int] = {}
        self._acked_mids: set[int] = set()
        self._connected = False
        self._resubscribing: Optional[int] = None  # mid of the SUBSCRIBE renewing subscriptions after a reconnect
        self.connects = 0
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or "probe-" + os.urandom(6).hex(), clean_session=clean_session)
        if endpoint.username is not None:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self._client.tls_set(ca_certs=endpoint.cafile)
        self._client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # floats work; paho's hint says int
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.connect(endpoint.host, endpoint.port, keepalive=30)
        self._client.loop_start()
        self.wait_until_connected(START_TIMEOUT)

    # -- paho callbacks (network thread) -------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            return
        with self._condition:
            self.connects += 1
            topics = list(self._subscriptions.items())
            if topics:
                _, mid = client.subscribe(topics)
                self._resubscribing = mid
            else:
                self._resubscribing = None
            self._connected = True
            self._condition.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._condition:
            self._connected = False
            self._condition.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._condition:
            if mid == self._resubscribing:
                self._resubscribing = None
            self._acked_mids.add(mid)
            self._condition.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._condition:
            self._messages.append(message)
            self._condition.notify_all()

    # -- API ---------------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Connected, with every subscription renewed."""
        with self._condition:
            return self._connected and self._resubscribing is None

    def wait_until_connected(self, timeout: float = 10.0) -> None:
        """Block until connected and every subscription is renewed; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not (self._connected and self._resubscribing is None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"probe not (re)connected to {self.endpoint.host}:{self.endpoint.port} "
                                         f"within {timeout} s")
                self._condition.wait(remaining)

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 5.0) -> "MqttProbe":
        """Subscribe and wait for the SUBACK; the subscription is renewed after every reconnect."""
        self.wait_until_connected(timeout)
        with self._condition:
            self._subscriptions[topic_filter] = qos
        _, mid = self._client.subscribe(topic_filter, qos)
        deadline = time.monotonic() + timeout
        with self._condition:
            while mid not in self._acked_mids:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no SUBACK for {topic_filter} within {timeout} s")
                self._condition.wait(remaining)
        return self

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                timeout: float = 5.0) -> None:
        """Publish and wait until the broker has it (PUBACK for QoS 1); waits for a reconnect first if needed."""
        self.wait_until_connected(timeout)
        info = self._client.publish(topic, payload, qos, retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise AssertionError(f"publish to {topic} failed: {exc}") from None
        if not info.is_published():
            raise AssertionError(f"publish to {topic} not acknowledged within {timeout} s")

    def publish_nowait(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        """Queue a publication and return at once (floods: thousands of QoS 0 messages without a wait each)."""
        self._client.publish(topic, payload, qos, retain)

    def messages(self, topic: Optional[str] = None) -> List[Any]:
        """Every message received so far (on ``topic``, if given), in arrival order."""
        with self._condition:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def wait_for(self, count: int, timeout: float = 10.0, topic: Optional[str] = None) -> List[Any]:
        """Block until ``count`` messages (on ``topic``, if given) arrived; AssertionError after ``timeout``."""
        return self.wait_until(lambda found: len(found) >= count, timeout, topic,
                               f"{count} messages on {topic or 'any topic'}")

    def wait_until(self, predicate: Callable[[List[Any]], bool], timeout: float = 10.0, topic: Optional[str] = None,
                   what: str = "the expected messages") -> List[Any]:
        """Block until ``predicate(messages on topic)`` holds and return those messages; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                found = [m for m in self._messages if topic is None or m.topic == topic]
                if predicate(found):
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m.topic, m.payload[:200]) for m in self._messages]
                    raise AssertionError(f"expected {what} within {timeout} s; got {seen}")
                self._condition.wait(remaining)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()  # wakes the network thread, so loop_stop() does not wait out its select
        self._client.loop_stop()


BrokerFactory = Callable[..., MosquittoBroker]


@pytest.fixture
def broker_factory() -> Iterator[BrokerFactory]:
    """Private mosquitto brokers for one test, which it may stop, kill and restart (same ports).

    ``broker_factory(persistence=False)`` returns a started :class:`MosquittoBroker` (anonymous listener on
    ``.port`` / ``.plain_port``, password listener on ``.auth_port``); with ``persistence=True`` it keeps
    sessions and queued messages across restarts; ``max_packet_size=N`` makes it disconnect a client that
    sends a packet above N bytes; ``max_inflight=N`` / ``max_queued=N`` set mosquitto's ``max_inflight_messages``
    / ``max_queued_messages``. Every broker is killed and its folder removed afterwards.
    Not available with an external broker (MQTT_HOST/MQTT_PORT set): the test is skipped.
    """
    if os.getenv("MQTT_HOST") and os.getenv("MQTT_PORT"):
        pytest.skip("needs brokers the tests start (MQTT_HOST/MQTT_PORT point at an external broker)")
    made: List[MosquittoBroker] = []

    def make(persistence: bool = False, max_packet_size: Optional[int] = None, max_inflight: Optional[int] = None,
             max_queued: Optional[int] = None) -> MosquittoBroker:
        broker = MosquittoBroker(session_folder() / "broker", persistence=persistence, max_packet_size=max_packet_size,
                                 max_inflight=max_inflight, max_queued=max_queued)
        made.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.kill()
            shutil.rmtree(broker.folder.parent, ignore_errors=True)


def session_folder() -> Path:
    """A new temporary folder that mosquitto (which drops root for its own user) can read."""
    folder = Path(tempfile.mkdtemp(prefix="listener-tests-"))
    folder.chmod(0o755)
    return folder
