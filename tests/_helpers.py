"""Small helpers shared by the integration tests."""

from __future__ import annotations

import time


def wait_for(cond, timeout: float = 10.0, what: str = "condition", interval: float = 0.05):
    """Poll ``cond()`` until it returns something truthy (returned), else fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
