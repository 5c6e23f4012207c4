"""`python -m msdn_tune.cli`: the same as the `msdn-tune` executable."""

from msdn_tune.cli.main import entrypoint

entrypoint()
