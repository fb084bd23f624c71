"""Hypothesis profiles for the hostile-input property tests.

``property`` (the default) keeps the whole package well under 30 s; ``thorough`` is for a long hunt
(``HYPOTHESIS_PROFILE=thorough .venv/bin/pytest tests/property``). Neither writes an example database:
failures are reproduced from the seed hypothesis prints, so nothing lands in the repository.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("property", max_examples=150, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("thorough", max_examples=2000, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.getenv("HYPOTHESIS_PROFILE", "property"))
