"""The suite loads the package's own pytest plugin here, after pytest-cov has started (see pytest.ini)."""

pytest_plugins = ["Listener.pytest_plugin", "pytester"]
