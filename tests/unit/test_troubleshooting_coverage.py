"""Every error message the listener raises for a user to read has an entry in docs/troubleshooting.md.

What is scanned: every module of ``Listener/`` (AST, no import), for
- each call of one of :data:`CLASSES` (``raise ConfigError(...)``, but also ``return BrokerRefusedConnection(...)``
  or ``future.set_exception(JobStoreError(...))``), and the ``super().__init__(...)`` text such a class builds;
- each call of a message builder in :data:`BUILDERS`: ``_fail(field, value, reason)`` of
  ``Listener/config/settings.py`` (the message ``Invalid <field>: <value> (<reason>)``), ``_parse_error(message)`` of
  ``Listener/config/parser.py`` (SafeConfigParser's errors, also those of an invalid payload);
- each string returned by a function of :data:`REASON_FUNCTIONS`, whose answer becomes the reason in one of
  those messages (why a topic, a ``share_group`` or a ``job_store`` setting is refused, why a SQLite file is lost).

The message is the call's first argument (for a builder, the argument it names). A variable is followed to what the
enclosing function assigns to it; ``redact(f"...", ...)`` and similar wrappers to their first argument; both
branches of ``a if c else b``. The message's *stable fragment* is its longest literal piece (a string constant,
or the constant text between an f-string's ``{…}`` fields; ``+`` joins pieces), with whitespace and the
punctuation ``:;,.()'"`` trimmed from its ends: the part a user sees whatever the values, and the part to
search for in the page. The test asserts that each fragment appears in docs/troubleshooting.md (whitespace
runs compared as one space, so a line wrap in the page does not matter).

A message whose longest literal piece is shorter than :data:`MIN_FRAGMENT` characters, or that is not a literal
at all (``str(exc)``, an attribute), carries no stable text of its own: it must be in :data:`NOT_OWN_MESSAGES`,
which says why it needs no entry (a re-raise of a message checked elsewhere, a generic wrapper whose parts are
checked one by one, an internal message no user sees). An allow-list entry that no longer matches anything
fails the test too, so the list stays true. :data:`MORE_MESSAGES` adds texts that are not an exception's
argument but end up in one (the reasons a broker refuses a connection).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

from Listener.jobs.redis import CLUSTER_TRANSACTIONS, DATA_LOST
from Listener.mqtt.client import _CONNACK_REASONS, CLOSED_DURING_CONNECT

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "Listener"
PAGE = ROOT / "docs" / "troubleshooting.md"

#: The exceptions whose messages a user reads: configuration errors, connection errors (the built-in and the
#: listener's subclasses of it), the job store's, and the amqtt version check.
CLASSES = frozenset({
    "ConfigError", "ConfigParseError", "ConfigValidationError",
    "ConnectionError", "BrokerRefusedConnection", "SharedSubscriptionUnsupported", "NotConnected", "ConnectionLost",
    "JobStoreError", "AmqttIncompatible",
})
#: (module, function) → the index of the argument that holds the message.
BUILDERS = {
    ("Listener/config/settings.py", "_fail"): 2,
    ("Listener/config/parser.py", "_parse_error"): 0,
}
#: (module, function) whose returned strings end up as the reason of a message.
REASON_FUNCTIONS = frozenset({
    ("Listener/core/topics.py", "_common_error"), ("Listener/core/topics.py", "share_group_error"),
    ("Listener/core/topics.py", "filter_error"), ("Listener/core/topics.py", "topic_name_error"),
    ("Listener/core/topics.py", "_forbidden_character"), ("Listener/jobs/factory.py", "job_store_problem"),
    ("Listener/jobs/sqlite.py", "_moved"),
})
MIN_FRAGMENT = 10
_TRIM = " \t\n:;,.()'\""

#: ``path:message source`` → why that message needs no entry of its own.
NOT_OWN_MESSAGES: Dict[str, str] = {
    "Listener/config/settings.py:f'Invalid {name}: {shown} ({why})'":
        "the wrapper behind _fail(field, value, reason): every reason is checked on its own",
    "Listener/config/settings.py:f'Invalid {variable}: {shown} (expected {_KIND_WORDS[kind]} for {name})'":
        "an environment variable's value of the wrong kind: its fixed part '(expected' is in MORE_MESSAGES",
    "Listener/config/settings.py:f'needs a {key!r}'":
        "the will without its 'topic' or 'message': the page's entry quotes \"needs a 'topic'\" (too short to check)",
    "Listener/config/settings.py:problem":
        "the reason of share_group_error() / job_store_problem(), both in REASON_FUNCTIONS",
    "Listener/config/parser.py:message":
        "_parse_error() passes on the message it is given: each call's message is checked (BUILDERS)",
    "Listener/mqtt/client.py:message":
        "BrokerRefusedConnection.__init__ passes on the message it is given ('Cannot connect to MQTT broker at')",
    "Listener/mqtt/client.py:'Not connected'":
        "internal: a publish attempted between connections, kept and sent on the next one, never shown to a user",
    "Listener/mqtt/wire_handler.py:'Not connected'":
        "internal: as above, from the packet writer",
    "Listener/mqtt/amqtt_boundary.py:problems":
        "AmqttIncompatible lists the amqtt names that changed; its own text is checked (super().__init__)",
    "Listener/jobs/sqlite.py:problem":
        "the reason _moved() gives, in REASON_FUNCTIONS",
    "Listener/jobs/sqlite.py:self._failure":
        "re-raises the message built by _failure_message ('Cannot write job store', in MORE_MESSAGES)",
    "Listener/jobs/sqlite.py:message":
        "the message built by _failure_message ('Cannot write job store', in MORE_MESSAGES)",
    "Listener/jobs/redis.py:self._failure":
        "re-raises the message of the failed write, built where it failed ('Cannot write job store', checked)",
    "Listener/testing/memory_broker.py:f'{self.client_id} is not connected'":
        "Listener.testing's in-memory broker: a test that publishes after disconnecting, not the listener's output",
}

#: Texts that end up in a message without being an exception's own literal: each must appear in the page.
MORE_MESSAGES: List[str] = [
    CLOSED_DURING_CONNECT.split(". ")[0],
    *(f"{reason} (CONNACK return code {code})" for code, reason in _CONNACK_REASONS.items()),
    "(expected",
    "Cannot write job store",
    DATA_LOST,
    CLUSTER_TRANSACTIONS,
]


@dataclass(frozen=True)
class Message:
    path: str
    line: int
    source: str
    fragment: Optional[str]

    @property
    def key(self) -> str:
        return f"{self.path}:{self.source}"


def _pieces(node: ast.expr) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.JoinedStr):
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value.value
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        yield from _pieces(node.left)
        yield from _pieces(node.right)


def _alternatives(node: ast.expr, function: Optional[ast.AST]) -> Iterator[ast.expr]:
    """The message expressions ``node`` may be: a variable followed to its assignments, a wrapper call to its
    first argument, a conditional to both branches; otherwise ``node`` itself."""
    if isinstance(node, ast.IfExp):
        yield from _alternatives(node.body, function)
        yield from _alternatives(node.orelse, function)
    elif isinstance(node, ast.Call) and node.args and any(True for _ in _pieces(node.args[0])):
        yield node.args[0]
    elif isinstance(node, ast.Name) and function is not None:
        found = False
        for assign in ast.walk(function):
            if isinstance(assign, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id for t in assign.targets):
                for value in _alternatives(assign.value, None):
                    if any(True for _ in _pieces(value)):
                        found = True
                        yield value
        if not found:
            yield node
    else:
        yield node


def _fragment(node: ast.expr) -> Optional[str]:
    pieces = sorted((piece.strip(_TRIM) for piece in _pieces(node)), key=len, reverse=True)
    return pieces[0] if pieces and len(pieces[0]) >= MIN_FRAGMENT else None


def scan(package: Path = PACKAGE) -> List[Message]:
    """Every message of the modules under ``package`` (paths relative to its parent, as ``Listener/…``)."""
    messages: List[Message] = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        parents: Dict[ast.AST, ast.AST] = {child: parent for parent in ast.walk(tree)
                                           for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            function: Optional[ast.AST] = node
            while function is not None and not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                function = parents.get(function)
            index = BUILDERS.get((relative, name or ""))
            if name in CLASSES and node.args:
                argument: ast.expr = node.args[0]
            elif index is not None and len(node.args) > index:
                argument = node.args[index]
            elif name == "__init__" and node.args and _in_class(node, parents) in CLASSES:
                argument = node.args[0]
            else:
                continue
            for alternative in _alternatives(argument, function):
                source = ast.unparse(alternative)
                messages.append(Message(relative, node.lineno, source, _fragment(alternative)))
        for function_node in ast.walk(tree):
            if isinstance(function_node, ast.FunctionDef) and (relative, function_node.name) in REASON_FUNCTIONS:
                for returned in ast.walk(function_node):
                    if isinstance(returned, ast.Return) and returned.value is not None:
                        for alternative in _alternatives(returned.value, function_node):
                            if any(True for _ in _pieces(alternative)):
                                messages.append(Message(relative, returned.lineno, ast.unparse(alternative),
                                                        _fragment(alternative)))
    return messages


def _in_class(node: ast.AST, parents: Dict[ast.AST, ast.AST]) -> Optional[str]:
    """The name of the class whose method holds ``node``, or None."""
    current: Optional[ast.AST] = parents.get(node)
    while current is not None and not isinstance(current, ast.ClassDef):
        current = parents.get(current)
    return current.name if isinstance(current, ast.ClassDef) else None


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_scan_finds_the_messages_it_is_meant_to() -> None:
    fragments = {message.fragment for message in scan()}
    assert "a password without a username: MQTT does not allow it; set username as well, or leave password " \
           "unset to connect without credentials" in fragments  # raise ConfigError(f"...")
    assert "must be a whole number of seconds > 0" in fragments  # a _fail reason
    assert "Cannot connect to MQTT broker at" in fragments  # through a variable and redact(...)
    assert "Invalid TOML syntax: nesting too deep" in fragments  # a _parse_error message
    assert "is installed, and it lacks or changed these names the listener relies on" in fragments  # super().__init__
    assert "may use '+' only as a whole level" in fragments  # a reason function's answer


def test_a_new_raise_without_an_entry_is_caught(tmp_path: Path) -> None:
    module = tmp_path / "Listener" / "config" / "extra.py"
    module.parent.mkdir(parents=True)
    module.write_text("def check(value):\n"
                      "    if value:\n"
                      "        raise ConfigError(f\"Invalid frobnication {value!r}: nobody documented this one\")\n"
                      "    message = f\"Job store {value} is haunted beyond repair\"\n"
                      "    raise JobStoreError(message)\n", encoding="utf-8")
    found = {message.fragment for message in scan(tmp_path / "Listener")}
    assert found == {"nobody documented this one", "is haunted beyond repair"}
    page = _normalised(PAGE.read_text(encoding="utf-8"))
    assert not any(fragment in page for fragment in found if fragment)


def test_every_message_has_an_entry_in_troubleshooting() -> None:
    page = _normalised(PAGE.read_text(encoding="utf-8"))
    missing: Set[str] = set()
    for message in scan():
        if message.key in NOT_OWN_MESSAGES:
            continue
        if message.fragment is None:
            assert message.key in NOT_OWN_MESSAGES, (
                f"{message.path}:{message.line}: {message.source} has no stable text of its own: give it one "
                f"(a literal of {MIN_FRAGMENT}+ characters) or add it to NOT_OWN_MESSAGES with the reason")
        elif _normalised(message.fragment) not in page:
            missing.add(f"{message.path}:{message.line}: {message.fragment!r}")
    for text in MORE_MESSAGES:
        if _normalised(text) not in page:
            missing.add(f"(MORE_MESSAGES) {text!r}")
    assert not missing, "docs/troubleshooting.md has no entry quoting:\n" + "\n".join(sorted(missing))


def test_the_allow_list_names_only_messages_that_exist() -> None:
    keys = {message.key for message in scan()}
    assert sorted(set(NOT_OWN_MESSAGES) - keys) == []
