"""The amqtt contract: ``Listener.mqtt.amqtt_boundary.CONTRACT`` lists every amqtt name the listener relies on,
the installed amqtt has each as listed, and no module but the boundary touches amqtt.

Renaming ``ClientProtocolHandler.handle_pingresp`` in amqtt passed every other broker-free test (amqtt's base
handler has a stub of it, so the listener's pings simply went unanswered); here it fails. ``make amqtt-canary``
runs this file against amqtt's newest release.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import subprocess  # nosec B404
import sys
import textwrap
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Set, Tuple

import pytest
from amqtt.mqtt.protocol.client_handler import ClientProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.session import Session

import Listener
from Listener import EventListenerConfig
from Listener.mqtt import amqtt_boundary as boundary
from Listener.mqtt.amqtt_boundary import CONTRACT, REQUIRED_VERSION, AmqttIncompatible, Kind
from Listener.mqtt.client import AmqttClient, create_client, open_connection

pytestmark = pytest.mark.unit

PACKAGE = Path(Listener.__file__).resolve().parent
BOUNDARY = Path(boundary.__file__).resolve()
ROOT = PACKAGE.parent
CONTRACT_NAMES = {term.name for term in CONTRACT}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _defined(tree: ast.AST) -> Set[str]:
    """Names a piece of source defines: functions, classes, variables, and attributes it assigns (``x.name = ...``)."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def _instance_names(klass: type) -> Set[str]:
    """What ``klass`` and its bases give an instance: class attributes, and what their methods assign to ``self``."""
    names = set(dir(klass))
    for base in klass.__mro__:
        if base is object or not base.__module__.startswith(("amqtt", "asyncio")):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(base)))
        names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                  and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    return names


def _amqtt_names() -> Set[str]:
    """Every attribute name of the amqtt (and asyncio) classes the contract names."""
    names: Set[str] = set()
    for term in CONTRACT:
        owner = boundary._resolve(term.owner) if term.owner not in boundary._READ_WHERE_PRESENT else None
        if isinstance(owner, type):
            names |= _instance_names(owner)
    return names


# -- the installed amqtt ------------------------------------------------------------------------------


def test_the_installed_amqtt_has_every_name_of_the_contract() -> None:
    assert boundary.contract_problems() == []


def test_the_pinned_amqtt_is_the_one_the_contract_describes() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"amqtt=={REQUIRED_VERSION}"' in pyproject


class _Connacking:
    """A loopback server that answers CONNECT with CONNACK (session present) and then reads on."""

    def __init__(self) -> None:
        self.port = 0
        self._server: Any = None

    async def __aenter__(self) -> "_Connacking":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._server.close()

    @staticmethod
    async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x02\x01\x00")
        while await reader.read(1024):
            pass
        writer.close()


@pytest.fixture
async def connected() -> AsyncIterator[AmqttClient]:
    async with _Connacking() as server:
        client = create_client(EventListenerConfig(host="127.0.0.1", port=server.port, keep_alive=60))
        await open_connection(EventListenerConfig(host="127.0.0.1", port=server.port), client, 5.0)
        try:
            yield client
        finally:
            await asyncio.wait_for(client.disconnect(), 5.0)


async def test_the_real_objects_have_every_instance_attribute_of_the_contract(connected: AmqttClient) -> None:
    wire = connected.wire
    assert wire is not None and wire.session_present is True, "the listener's own reader saw the CONNACK"
    handler = wire.link
    stream = handler.socket_reader()
    policy = asyncio.get_event_loop_policy()
    objects: Dict[str, Any] = {
        "amqtt.client:MQTTClient": connected, "amqtt.plugins.manager:PluginManager": connected.plugins_manager,
        "amqtt.session:Session": connected.session, "amqtt.mqtt.protocol.client_handler:ClientProtocolHandler": handler,
        "amqtt.adapters:StreamReaderAdapter": handler.reader, "amqtt.adapters:StreamWriterAdapter": handler.writer,
        "asyncio:StreamReader": stream, "asyncio.events:BaseDefaultEventLoopPolicy": policy,
        "asyncio.events:BaseDefaultEventLoopPolicy._Local": policy._local,  # type: ignore[attr-defined]
    }
    owners = {term.owner for term in CONTRACT if term.kind is Kind.INSTANCE_ATTRIBUTE}
    assert owners == set(objects), "give this test an object of each owner of an instance attribute"
    for owner, obj in objects.items():
        assert boundary.instance_problems(obj, owner) == [], owner


# -- the contract is complete -------------------------------------------------------------------------


def test_no_module_but_the_boundary_imports_amqtt() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == BOUNDARY:
            continue
        for node in ast.walk(_tree(path)):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {name}" for name in modules
                      if name == "amqtt" or name.startswith("amqtt.")]
    assert found == []


def test_every_private_name_the_boundary_touches_is_in_the_contract() -> None:
    """A ``._name`` read or written in the boundary is the boundary's own, or an amqtt (or asyncio) one the
    contract lists: nothing of amqtt's is used without being checked."""
    tree = _tree(BOUNDARY)
    touched = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and _is_private(node.attr)}
    for klass in (boundary.AmqttClientBase, boundary.AmqttHandler):
        touched |= {name for name in vars(klass) if _is_private(name)}
    amqtt = _amqtt_names()
    own = _defined(tree) - amqtt
    unlisted = sorted(touched - own - CONTRACT_NAMES)
    assert unlisted == [], f"add these to CONTRACT in {BOUNDARY.name}: {unlisted}"


def _class_defines(klass: type) -> Set[str]:
    """What a class of the listener defines itself: its methods and properties, and what it assigns to ``self``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    assigned = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    return {name for name in vars(klass) if not name.startswith("__") or name == "__init__"} | assigned


@pytest.mark.parametrize("klass, amqtt_class", [(boundary.AmqttClientBase, "amqtt.client:MQTTClient"),
                                                (boundary.AmqttHandler, boundary._HANDLER)])
def test_the_boundary_overrides_only_what_the_contract_lists(klass: type, amqtt_class: str) -> None:
    """A name the boundary's subclass defines that amqtt's class also has is an override: listed, its signature
    checked. A new amqtt release adding a name the listener already uses shows up here too."""
    overrides = _class_defines(klass) & _instance_names(boundary._resolve(amqtt_class))
    assert sorted(overrides - CONTRACT_NAMES) == []


def test_the_listeners_client_overrides_nothing_of_amqtts() -> None:
    """Every override lives in the boundary: the client adds names of its own only (its ``__init__`` is the
    boundary's, with more options)."""
    clashes = _class_defines(AmqttClient) & _instance_names(boundary._resolve("amqtt.client:MQTTClient"))
    clashes.discard("__init__")
    assert sorted(clashes) == []


def test_no_other_module_reaches_into_amqtt_objects() -> None:
    """Outside the boundary, a ``._name`` that amqtt's classes have is only ever the module's own."""
    amqtt = {name for name in _amqtt_names() if _is_private(name)}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == BOUNDARY:
            continue
        tree = _tree(path)
        own = _defined(tree)
        found += [f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in amqtt and node.attr not in own]
    assert found == []


def test_every_override_and_every_packet_handler_is_in_the_contract() -> None:
    listed = {(term.name, term.kind) for term in CONTRACT}
    for name in ("_reader_loop", "_send_packet", "_stop_waiters", "mqtt_connect", "stop", "_init_session", "connect",
                 "publish", "disconnect", "handle_connack", "handle_suback", "handle_unsuback", "handle_pingresp",
                 "handle_disconnect"):
        assert (name, Kind.SIGNATURE) in listed, name


# -- a changed amqtt is refused, with a message that says what changed --------------------------------


def test_a_renamed_handle_pingresp_is_refused_naming_it_and_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a scratch copy of amqtt with handle_pingresp renamed looks like: only the base handler's stub is left.
    monkeypatch.delattr(ClientProtocolHandler, "handle_pingresp")
    assert hasattr(ClientProtocolHandler, "handle_pingresp")
    with pytest.raises(AmqttIncompatible) as raised:
        boundary.require_contract()
    message = str(raised.value)
    assert "amqtt.mqtt.protocol.client_handler.ClientProtocolHandler.handle_pingresp is missing" in message
    assert f"needs amqtt {REQUIRED_VERSION}" in message and f"amqtt {boundary.installed_version()} is installed" in message
    assert raised.value.problems == tuple(p for p in raised.value.problems if "handle_pingresp" in p)
    assert isinstance(raised.value, ImportError)


def test_a_changed_signature_is_refused_with_both_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _send_packet(self: Any, packet: Any, flush: bool = True) -> None:
        """A new keyword: the override would no longer match."""

    monkeypatch.setattr(ProtocolHandler, "_send_packet", _send_packet)
    with pytest.raises(AmqttIncompatible) as raised:
        boundary.require_contract()
    assert ("ProtocolHandler._send_packet changed: async (self, packet) expected, async (self, packet, flush=True) "
            "found") in str(raised.value)


def test_a_method_now_defined_by_the_subclass_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener overrides ProtocolHandler._stop_waiters through ClientProtocolHandler; a new one there changes
    what ``super()`` reaches."""
    monkeypatch.setattr(ClientProtocolHandler, "_stop_waiters", lambda self: None, raising=False)
    with pytest.raises(AmqttIncompatible) as raised:
        boundary.require_contract()
    assert "ClientProtocolHandler, which the listener uses, now takes it from" in str(raised.value)


def test_an_object_without_an_instance_attribute_is_refused() -> None:
    stripped = type("StrippedHandler", (), {"reader": None, "writer": None})()
    with pytest.raises(AmqttIncompatible) as raised:
        boundary.require_attributes(stripped, boundary._HANDLER)
    message = str(raised.value)
    assert "ClientProtocolHandler._reader_ready is missing" in message and ".reader is missing" not in message


async def test_a_session_without_its_delivery_queue_stops_the_connect_with_amqtt_incompatible(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked on the real session as the client makes it: not a ConnectionError, which the run loop would retry."""
    original = Session.__init__

    def without_queue(self: Any) -> None:
        original(self)
        del self.delivered_message_queue

    monkeypatch.setattr(Session, "__init__", without_queue)
    config = EventListenerConfig(host="127.0.0.1", port=1)
    with pytest.raises(AmqttIncompatible, match="Session.delivered_message_queue is missing"):
        await open_connection(config, create_client(config), 5.0)


def test_importing_the_listener_with_a_renamed_amqtt_name_fails_with_amqtt_incompatible() -> None:
    script = ("import amqtt.mqtt.protocol.client_handler as handler\n"
              "del handler.ClientProtocolHandler.handle_pingresp\n"
              "try:\n"
              "    import Listener\n"
              "except ImportError as exc:\n"
              "    print(type(exc).__name__, exc)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,  # nosec B603
                            cwd=ROOT, check=True)
    assert result.stdout.startswith("AmqttIncompatible The listener needs amqtt")
    assert "ClientProtocolHandler.handle_pingresp is missing" in result.stdout


def _terms(kind: Kind) -> Tuple[str, ...]:
    return tuple(term.label for term in CONTRACT if term.kind is kind)


def test_every_term_says_why_and_signatures_are_given_where_checked() -> None:
    assert all(term.use for term in CONTRACT)
    assert all(term.signature for term in CONTRACT if term.kind is Kind.SIGNATURE)
    assert not any(term.signature for term in CONTRACT if term.kind is not Kind.SIGNATURE)
    assert len(set((term.owner, term.name) for term in CONTRACT)) == len(CONTRACT), "a term listed twice"
    assert _terms(Kind.SIGNATURE) and _terms(Kind.INSTANCE_ATTRIBUTE)
