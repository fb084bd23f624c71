"""The amqtt adapter's pure helpers: which strings are secrets, endpoint labels, amqtt's config; its liveness
watchdog against a client whose connection, pings and traffic the test controls."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, List

import pytest
from amqtt.errors import ConnectError, NoDataError

from Listener import EventListenerConfig
from Listener.mqtt.client import (
    CLOSED_DURING_CONNECT, AmqttClient, BrokerRefusedConnection, build_client_config, connection_error, create_client,
    endpoint_label, new_client, secrets,
)
from Listener.mqtt.packets import publish_packet
from tests.support.packets import read_packet


def test_the_manuals_public_default_password_is_not_masked_in_text() -> None:
    assert secrets(EventListenerConfig()) == ()


def test_real_passwords_are_secrets_wherever_they_come_from() -> None:
    assert secrets(EventListenerConfig(password="s3cret-pw")) == ("s3cret-pw",)
    from_uri = EventListenerConfig(password="field-pw", uri="mqtt://u:uri%40pw@h:1883")
    assert set(secrets(from_uri)) == {"uri@pw", "field-pw"}
    assert secrets(EventListenerConfig(password=None)) == ()


def test_endpoint_label_never_carries_credentials() -> None:
    assert endpoint_label(EventListenerConfig(uri="mqtts://u:p@broker.example")) == "broker.example:8883"
    assert endpoint_label(EventListenerConfig(host="h", port=1884)) == "h:1884"


def amqtt_connect_error(cause: BaseException) -> ConnectError:
    """The exception chain amqtt 0.12's ``connect()`` raises for ``cause``."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise ConnectError(exc) from exc
    except ConnectError as error:
        return error


def closed_before_connack() -> ConnectError:
    """amqtt's chain when the broker closes the connection after CONNECT: ConnectError <- ConnectionError <- NoDataError."""
    try:
        raise NoDataError("No data to decode MQTT packet fixed header")
    except NoDataError as no_data:
        try:
            raise ConnectionError from no_data
        except ConnectionError as closed:
            return amqtt_connect_error(closed)


def test_a_connection_closed_during_connect_lists_the_likely_causes_without_secrets() -> None:
    config = EventListenerConfig(host="h", port=1884, username="svc", password="pw-transport-31")
    error = connection_error(config, closed_before_connack(), connecting=True)
    assert type(error) is ConnectionError  # not a refusal: the run loop may retry it
    assert str(error) == f"Cannot connect to MQTT broker at h:1884: {CLOSED_DURING_CONNECT}"
    for cause in ("password sent without a user name", "ACL plugin", "client id", "expects TLS", "broker's log"):
        assert cause in str(error)
    assert "pw-transport-31" not in str(error)
    reset = connection_error(config, amqtt_connect_error(ConnectionResetError(104, "Connection reset by peer")),
                             connecting=True)
    assert CLOSED_DURING_CONNECT in str(reset)


def test_only_a_close_after_connect_is_described_as_one() -> None:
    config = EventListenerConfig(host="h", port=1884)
    refused = connection_error(config, amqtt_connect_error(ConnectionRefusedError(111, "Connect call failed")),
                               connecting=True)
    assert CLOSED_DURING_CONNECT not in str(refused) and "Connect call failed" in str(refused)
    # A subscription whose connection ended is not a CONNECT problem.
    assert CLOSED_DURING_CONNECT not in str(connection_error(config, closed_before_connack()))
    refusal = ConnectError("Connection rejected by broker")
    refusal.return_code = 5
    error = connection_error(config, refusal, connecting=True)
    assert isinstance(error, BrokerRefusedConnection) and "not authorised (CONNACK return code 5)" in str(error)


def test_amqtts_own_connect_failure_warnings_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    # The listener reports each failure itself, once; amqtt repeated it at WARNING at every attempt.
    caplog.set_level(logging.DEBUG, logger="amqtt.client")
    client = new_client(EventListenerConfig())
    client.logger.warning("Connection failed: %r", ConnectError(ConnectionError()))
    client.logger.warning("Connection rejected with code '5'")
    client.logger.warning("Disconnected from broker")
    levels = {r.getMessage(): r.levelno for r in caplog.records if r.name == "amqtt.client"}
    assert levels == {"Connection failed: ConnectError(ConnectionError())": logging.DEBUG,
                      "Connection rejected with code '5'": logging.DEBUG,
                      "Disconnected from broker": logging.WARNING}


def test_amqtt_config_has_no_credentials_no_plugins_and_our_own_reconnect() -> None:
    built = build_client_config(EventListenerConfig(uri="mqtt://u:p@h:1883", keep_alive=7, ping_delay=2))
    assert built["connection"]["uri"] == "mqtt://h:1883"
    assert built["plugins"] == {} and built["auto_reconnect"] is False
    assert (built["keep_alive"], built["ping_delay"]) == (7, 2)


# -- the liveness watchdog -------------------------------------------------------------------------------


class SilentBroker(AmqttClient):
    """A "connected" client whose pings are never answered; the test feeds it traffic with note_traffic()."""

    def __init__(self) -> None:
        super().__init__("watchdog-test", build_client_config(EventListenerConfig()))
        self.dropped_at: List[float] = []
        self.pings = 0

    @property
    def connection_closed(self) -> bool:
        return bool(self.dropped_at)

    async def ping(self) -> None:
        self.pings += 1
        await asyncio.Event().wait()  # no PINGRESP ever

    def drop_connection(self) -> None:
        self.dropped_at.append(time.monotonic())


async def test_inbound_traffic_resets_the_liveness_deadline() -> None:
    """Issue 9 item 3: no PINGRESP ever comes, but bytes keep arriving: the connection is not dropped. Once the
    traffic stops, it is dropped about 2 periods later, and the pings went out all along."""
    client = SilentBroker()
    period = 0.1
    watchdog = asyncio.ensure_future(client.watch_liveness(period, "test:1"))
    fed_until = time.monotonic() + 8 * period
    while time.monotonic() < fed_until:
        client.note_traffic(100)
        await asyncio.sleep(period / 4)
    assert not watchdog.done() and client.dropped_at == []
    assert client.pings >= 4, "pings keep going out, so the broker hears from the client too"
    assert await asyncio.wait_for(watchdog, 10 * period) is True
    assert client.dropped_at[0] - fed_until >= 1.5 * period
    assert client.bytes_received >= 100 * 20


async def test_a_silent_connection_is_dropped_within_two_periods() -> None:
    client = SilentBroker()
    started = time.monotonic()
    assert await asyncio.wait_for(client.watch_liveness(0.1, "test:1"), 2.0) is True
    assert 0.2 <= client.dropped_at[0] - started < 1.0


async def test_the_watchdog_returns_false_when_the_connection_ends_by_itself() -> None:
    class Closing(SilentBroker):
        closed = False

        @property
        def connection_closed(self) -> bool:
            return self.closed

    client = Closing()
    watchdog = asyncio.ensure_future(client.watch_liveness(0.1, "test:1"))
    client.note_traffic(1)
    await asyncio.sleep(0.05)
    client.closed = True
    assert await asyncio.wait_for(watchdog, 2.0) is False
    assert client.dropped_at == []


async def test_a_new_client_takes_over_the_delivery_queue_of_the_lost_connection() -> None:
    """Issue 9 item 3: what the lost connection received is still processed after the reconnect (the reconnect
    does not wait for it to be drained)."""
    old, new = create_client(EventListenerConfig()), create_client(EventListenerConfig())
    old.session_queue()  # what each new amqtt session of the client is given
    assert old._deliveries is not None
    old._deliveries.put_nowait("queued-1")
    woken: List[Any] = []
    new.on_wakeup = lambda: woken.append(1)
    new.adopt_deliveries(old)
    new.session_queue()
    assert new.queued_messages == 1 and new.take_message() == "queued-1"
    new._deliveries.put_nowait("arrived-later")  # type: ignore[union-attr]
    assert woken == [1]
    assert new.drop_queued_messages() == ["arrived-later"] and new.queued_messages == 0


async def test_bytes_received_but_not_yet_read_count_as_life() -> None:
    """The loop was too busy to read what arrived (a backlog of jobs): that is not a dead connection."""
    class Backlogged(SilentBroker):
        unread = 4096

        def unread_socket_bytes(self) -> int:
            return self.unread

    client = Backlogged()
    watchdog = asyncio.ensure_future(client.watch_liveness(0.05, "test:1"))
    await asyncio.sleep(0.4)
    assert not watchdog.done() and client.dropped_at == []
    client.unread = 0
    assert await asyncio.wait_for(watchdog, 2.0) is True


async def test_disconnect_closes_the_socket_only_after_the_broker_closed_its_side() -> None:
    """Closing a socket with unread bytes sends a reset, and mosquitto then drops the connection without reading
    what it had not read yet (the last QoS 0 results and the DISCONNECT, so it published the will). So after its
    DISCONNECT the client half-closes and reads on, whatever the broker still sends, until the broker closes."""
    after_disconnect: List[bytes] = []
    half_closed = asyncio.Event()
    outcome: List[str] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        try:
            while not after_disconnect or after_disconnect[-1] != b"\xe0\x00":
                after_disconnect.append(await read_packet(reader))
            outcome.append("eof" if await reader.read() == b"" else "more data")
            half_closed.set()
            # Still sending (a message that was in flight): the client must read it, not reset the connection.
            writer.write(publish_packet("t/late", b"in flight", 0, False))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            outcome.append(type(exc).__name__)
            half_closed.set()
        finally:
            writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = create_client(EventListenerConfig(host="127.0.0.1", port=port, keep_alive=60))
        await client.connect(f"mqtt://127.0.0.1:{port}")
        received = client.bytes_received
        closing = asyncio.create_task(client.disconnect())
        await asyncio.wait_for(half_closed.wait(), 5)
        assert outcome == ["eof"] and after_disconnect == [b"\xe0\x00"]
        await asyncio.wait_for(closing, 5)
        # The late message was read before the socket closed (so the close sent no reset).
        assert client.bytes_received == received + len(publish_packet("t/late", b"in flight", 0, False))
        assert not client.is_connected()
    finally:
        server.close()
        await server.wait_closed()
