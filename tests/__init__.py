"""
The twisted_kv test suite (run with trial).

Hypothesis runs derandomized and without deadlines, so every run of the suite
tries the same examples and a slow machine never fails a property test.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "twisted_kv",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("twisted_kv")
