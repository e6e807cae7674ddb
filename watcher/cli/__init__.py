"""The ``proofwatch`` command line (Typer + Rich)."""
