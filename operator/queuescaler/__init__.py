"""queuescaler: keeps pools of queue workers the right size."""

__version__ = "0.1.0"
