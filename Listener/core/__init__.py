"""Vocabulary every layer shares: MQTT topic syntax, JSON encoding, back-off, deadlines, secret masking."""
