"""The pure core: every rule the operator follows, with no I/O, no clock and no kopf.

spec (what the user asked), sample (what a broker said), decision (how many replicas),
plan (everything one tick does), status (what users read), workers (which pods are busy),
redact (what never leaves the process).
"""
