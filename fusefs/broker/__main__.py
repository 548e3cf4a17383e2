"""python -m fusefs.broker: the same as pyfsmount-broker."""

from fusefs.broker.cli import main

main()
