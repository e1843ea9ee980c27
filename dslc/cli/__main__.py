"""`python -m dslc.cli`: the same as the `dslc` command."""
from dslc.cli import run

run()
