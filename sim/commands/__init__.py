"""Subcommands of ``python -m sim``; each module offers ``help``, ``add_arguments`` and ``main``."""
