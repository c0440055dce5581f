"""`python -m queuescaler run ...` is the same as the `queuescaler` command."""

from queuescaler.cli import main

main()
