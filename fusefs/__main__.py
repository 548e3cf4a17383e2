"""Process entry point: python -m fusefs (same as pyfsmount)."""
from fusefs.cli import main

main()
