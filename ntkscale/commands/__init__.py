"""CLI subcommands; each module registers its commands with ``ntkscale.cli.command``."""
