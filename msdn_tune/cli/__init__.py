"""The `msdn-tune` command line: click groups and printing only; the work is in commands/."""

from msdn_tune.cli.main import entrypoint, main

__all__ = ["entrypoint", "main"]
