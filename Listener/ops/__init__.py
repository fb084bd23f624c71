"""Running it in production: metrics, log and error events, JSON logs, HTTP endpoints, signals."""
