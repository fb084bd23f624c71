"""Calling a user's processor: sync or async, worker threads, batches, containment."""
