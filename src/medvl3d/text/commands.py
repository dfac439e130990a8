"""CLI commands of this package (placeholder until its issue lands)."""


def register(subparsers) -> None:
    """Add this package's subcommands to `medvl3d`."""
