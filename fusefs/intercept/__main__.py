"""python -m fusefs.intercept: the same as pyfsmount-intercept."""

from fusefs.intercept.cli import main

main()
