"""``python -m k2`` is the ``k2`` command."""

from k2.cli import main

main()
