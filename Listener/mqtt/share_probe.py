"""``share_group`` proven at every connection: does the broker really apply ``$share/<group>/<filter>``?

Mosquitto 2 applies shared subscriptions for MQTT 3.1.1 clients. amqtt's broker, Aedes and RabbitMQ 3.x
grant ``$share/<group>/jobs`` as a literal topic filter that no topic matches: every member of the group
subscribes, none ever receives a job, and nothing says so. So, once subscribed, the listener's own client
checks it on two topics private to this connection (never the job topics: a message there could go to
another member of the group and run as a job)::

    mqtt-listener/share-probe/<client id>/<random hex>/shared   subscribed as $share/<group>/<that topic>
    mqtt-listener/share-probe/<client id>/<random hex>/direct   subscribed as it is

1. One SUBSCRIBE (QoS 0) for both, then one QoS 0 message to each, the shared topic first. Whatever has not
   arrived is published again :data:`REPUBLISH_AFTER` seconds after the start.
2. The shared message arrives: the broker applies shared subscriptions. Both are unsubscribed.
3. Only the direct message arrives, and the shared one not :data:`VERDICT_GRACE` seconds later (it was sent
   first, on the same connection): the broker does not apply them, :class:`SharedSubscriptionUnsupported`.
   A probe subscription refused in the SUBACK ends the same way. Not retried: ``mqtt-listener run`` exits 2.
4. Neither arrives within :data:`PROBE_TIMEOUT` seconds: nothing on the probe topics reaches this client (an
   ACL denies them, or the broker is overloaded): a ``ConnectionError``, retried like a failed connection.

The direct message is the control that tells "does not apply ``$share``" (a verdict) from "delivers
nothing right now" (perhaps passing), so a slow broker is never taken for one without shared subscriptions.
QoS 0 throughout: the probe messages pass the broker's in-flight window even when it is full of messages whose
acknowledgement waits for their job, and never enter the listener's acknowledgement bookkeeping. They are
taken out of the delivery queue as they arrive (:meth:`~Listener.mqtt.delivery_queue.DeliveryQueue.intercept`), so they
never become jobs and never mix with the backlog a previous connection left. On Mosquitto the check costs
three round trips (SUBSCRIBE, the messages, UNSUBSCRIBE).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any, Awaitable, Dict, List, Optional, Tuple

from ..config.settings import EventListenerConfig
from ..core.topics import topic_name_error
from .client import AmqttClient, BrokerRefusedConnection, create_client, endpoint_label, open_connection

__all__ = ["PROBE_PREFIX", "PROBE_TIMEOUT", "SharedSubscriptionUnsupported", "check_share_group", "probe_topics",
           "verify_share_group"]

logger = logging.getLogger("Listener.share_probe")

#: The topics probed live under this prefix (an ACL must let the listener subscribe and publish there).
PROBE_PREFIX = "mqtt-listener/share-probe"
#: Seconds to wait for any probe message before the probe topics count as not delivered.
PROBE_TIMEOUT = 5.0
#: Seconds after the start at which the probe messages not received yet are published again.
REPUBLISH_AFTER = (1.0, 2.5)
#: Seconds the shared message may follow the direct one before the broker counts as not applying ``$share``.
VERDICT_GRACE = 1.0
#: Seconds the SUBACK and UNSUBACK of the probe subscriptions may take.
ACK_TIMEOUT = 10.0
#: Seconds ``check-config`` waits for a disconnect.
DISCONNECT_TIMEOUT = 5.0
#: Not TOML: if a probe message ever reached the pipeline, it would be rejected, never run as a job.
PROBE_PAYLOAD = b"mqtt-listener share_group probe, not a job"
_REFUSED = 0x80
_BROKERS = "a broker with MQTT shared subscriptions (Mosquitto 2, EMQX, HiveMQ, VerneMQ)"


class SharedSubscriptionUnsupported(BrokerRefusedConnection):
    """The broker does not apply the shared subscriptions ``share_group`` needs (checked at each connection).

    A ``ConnectionError`` the run loop does not retry; ``mqtt-listener run`` exits 2 on it.
    """


def probe_topics(client_id: str, token: Optional[str] = None) -> Tuple[str, str]:
    """``(shared, direct)``: the probe topics of one connection (``token``: random hex when omitted).

    The client id is one level of them when it can be (an ACL can then grant
    ``mqtt-listener/share-probe/%c/#``), else the level is ``client``.
    """
    level = client_id if "/" not in client_id and topic_name_error(client_id) is None else "client"
    base = f"{PROBE_PREFIX}/{level}/{token or os.urandom(6).hex()}"
    return f"{base}/shared", f"{base}/direct"


async def verify_share_group(client: AmqttClient, group: str, client_id: str, endpoint: str, *,
                             timeout: float = PROBE_TIMEOUT) -> float:
    """Check that the broker ``client`` is connected to applies ``$share/<group>/`` (see the module docstring).

    Returns the seconds the check took.

    Raises:
        SharedSubscriptionUnsupported: it does not (or refused a probe subscription).
        ConnectionError: neither probe message arrived within ``timeout`` seconds, or the connection failed.
    """
    started = time.monotonic()
    shared, direct = probe_topics(client_id)
    shared_filter = f"$share/{group}/{shared}"
    caught = {topic: client.intercept(topic) for topic in (shared, direct)}
    unsubscribed = False
    try:
        granted = await _answered(client.subscribe([(shared_filter, 0), (direct, 0)]), ACK_TIMEOUT, endpoint,
                                  "subscribing to the share_group probe")
        if isinstance(granted, list) and _REFUSED in granted:
            refused = [name for name, code in zip((shared_filter, direct), granted) if code == _REFUSED]
            raise SharedSubscriptionUnsupported(
                f"MQTT broker at {endpoint} refused the subscription to {', '.join(refused)}, the probe that checks "
                f"share_group {group!r}: either it has no MQTT shared subscriptions (use {_BROKERS}, or remove "
                f"share_group) or an ACL denies this client the topics under {PROBE_PREFIX}/ (allow it to "
                f"subscribe and publish there)")
        await _await_probe(client, caught, (shared, direct), group, endpoint, started, timeout)
        await _answered(client.unsubscribe([shared_filter, direct]), ACK_TIMEOUT, endpoint,
                        "unsubscribing from the share_group probe")
        unsubscribed = True
    finally:
        for topic, future in caught.items():
            future.cancel()
            if unsubscribed:
                client.stop_intercepting(topic)
            # else the probe subscription may outlive the probe: late copies stay out of the queue
    elapsed = time.monotonic() - started
    logger.info("share_group %r: the broker at %s applies shared subscriptions (checked in %.1f ms)", group,
                endpoint, 1000 * elapsed)
    return elapsed


async def _await_probe(client: AmqttClient, caught: "Dict[str, asyncio.Future[Any]]", topics: Tuple[str, str],
                       group: str, endpoint: str, started: float, timeout: float) -> None:
    """Publish the probe messages and wait for the verdict (steps 1 to 4 of the module docstring)."""
    shared, direct = topics
    republish: List[float] = [started + after for after in REPUBLISH_AFTER if after < timeout]
    deadline = started + timeout
    direct_at: Optional[float] = None
    lost = asyncio.ensure_future(client.wait_closed())
    try:
        await _publish(client, [shared, direct], caught, endpoint)
        while not caught[shared].done():
            now = time.monotonic()
            if direct_at is None and caught[direct].done():
                direct_at = now
            if direct_at is not None and now >= direct_at + VERDICT_GRACE:
                raise SharedSubscriptionUnsupported(
                    f"MQTT broker at {endpoint} does not apply MQTT shared subscriptions, which share_group {group!r} "
                    f"needs: it granted the probe subscription under $share/{group}/ but delivered the probe message "
                    f"only through a plain subscription, so no job would ever arrive (amqtt's broker, Aedes and "
                    f"RabbitMQ 3.x take $share/... as a literal topic filter). Use {_BROKERS} or remove "
                    f"share_group; if this broker has them, check that its ACL lets this client read "
                    f"{PROBE_PREFIX}/# through $share/{group}/")
            if direct_at is None and now >= deadline:
                raise ConnectionError(
                    f"MQTT broker at {endpoint} delivered neither share_group probe message within {timeout:g} s, "
                    f"so its shared subscriptions (share_group {group!r}) are not verified: an ACL may deny this "
                    f"client the topics under {PROBE_PREFIX}/ (allow it to subscribe and publish there), or the "
                    f"broker is overloaded")
            if republish and now >= republish[0]:
                republish.pop(0)
                await _publish(client, [shared, direct], caught, endpoint)
                continue
            wake = min(republish[:1] + [direct_at + VERDICT_GRACE if direct_at is not None else deadline])
            waiting = {future for future in caught.values() if not future.done()}
            await asyncio.wait(waiting | {lost}, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED)
            if lost.done() and not caught[shared].done():
                raise ConnectionError(f"Connection to MQTT broker at {endpoint} lost during the share_group probe")
    finally:
        lost.cancel()
        if lost.done() and not lost.cancelled():
            lost.exception()  # retrieved: a failed watch has nothing to add to the verdict


async def _publish(client: AmqttClient, topics: List[str], caught: "Dict[str, asyncio.Future[Any]]",
                   endpoint: str) -> None:
    for topic in topics:
        if not caught[topic].done():
            await _answered(client.publish(topic, PROBE_PAYLOAD, 0, False), ACK_TIMEOUT, endpoint,
                            "publishing the share_group probe")


async def _answered(work: Awaitable[Any], timeout: float, endpoint: str, doing: str) -> Any:
    """``work`` within ``timeout`` seconds; any failure is a ``ConnectionError`` naming ``endpoint`` and ``doing``."""
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.CancelledError:
        raise
    except asyncio.TimeoutError:
        raise ConnectionError(f"MQTT broker at {endpoint} did not answer within {timeout:g} s {doing}") from None
    except Exception as exc:  # amqtt fails in assorted ways once the connection is gone
        raise ConnectionError(f"Connection to MQTT broker at {endpoint} failed {doing}: "
                              f"{str(exc) or type(exc).__name__}") from None


async def check_share_group(config: EventListenerConfig, timeout: float) -> float:
    """Connect to the broker of ``config`` and run :func:`verify_share_group` for its ``share_group`` (check-config).

    A client of its own (a fresh client id, no will, a clean session) so that a running listener is never
    disconnected and its session never touched. Returns the seconds the probe took.

    Raises:
        ValueError: ``config`` has no ``share_group``.
        SharedSubscriptionUnsupported: the broker does not apply shared subscriptions.
        ConnectionError: the broker could not be reached or refused the connection, or the probe went unanswered.
    """
    group = config.share_group
    if group is None:
        raise ValueError("config has no share_group to check")
    probing = dataclasses.replace(config, client_id=f"mqtt-listener-check-{os.urandom(6).hex()}", will=None,
                                  cleansession=True)
    client = create_client(probing)
    await open_connection(probing, client, timeout, cleansession=True)
    try:
        return await verify_share_group(client, group, probing.client_id, endpoint_label(probing))
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), DISCONNECT_TIMEOUT)
        except Exception as exc:  # the verdict is what matters
            logger.debug("Disconnect after the share_group check failed: %r", exc)
