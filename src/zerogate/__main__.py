"""``python -m zerogate`` runs the command line."""

from zerogate.cli.main import main

main()
