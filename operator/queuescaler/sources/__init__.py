"""Brokers as sources of queue samples: one subpackage per broker, behind `registry.SOURCES`."""
