"""The command line (``graphprune``): main, the shared helpers, and one module per heavy subcommand."""
