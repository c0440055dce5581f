"""The simulator, the peers' formulas and the traces they replay: pure, and importable by
users (`queuescaler simulate` builds on it)."""
