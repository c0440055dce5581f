"""tests/unit imports `support` by this name for REPO and CACHE; everything else imports
queuescaler_testkit.env, where they are defined."""

from queuescaler_testkit.env import CACHE, REPO

__all__ = ["CACHE", "REPO"]
