"""Plain helpers the tests share. Fixtures live in the conftest.py files (tests/conftest.py: those several
directories use), except the few defined next to what they serve (``brokers.broker_factory``,
``redis_server.redis_server`` and ``redis_factory``, ``redis_cluster.redis_cluster``,
``redis_sentinel.redis_sentinels``), which test modules import.

Brokers and servers: ``brokers`` (Mosquitto, ``MqttProbe``), ``interop_brokers``, ``amqtt_broker``, ``redis_server``,
``proxy`` (``TcpProxy``), ``leftovers``. Listeners: ``listeners`` (in this process, on a broker),
``mocked_listeners`` (an AsyncMock client), ``listener_processes`` with ``listener_program`` (subprocesses).
Jobs and results: ``job_messages``, ``processors``, ``strict_json``, ``hostile_inputs``, ``toml_writer``, ``packets``.
Waiting: ``waiting``. Browser tests: ``browser`` (chromium, its flags,
``screenshot_path``). ``sample_user_tests`` is a user's test file, run by the packaging tests.
"""
