"""Settings: the EventListenerConfig dataclass, its checks, and TOML parsing."""
