"""`python -m advcli` (also how torchrun launches it)."""

from advcli.cli.app import main

main()
