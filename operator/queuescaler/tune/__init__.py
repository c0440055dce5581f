"""`queuescaler simulate` and `queuescaler recommend` (see `commands`)."""

from queuescaler.tune.commands import COMMANDS

__all__ = ["COMMANDS"]
