# Open-ended fuzzing of the drivers (scripts/fuzz.py): make fuzz FORMAT=ext4 TIME=1h
# FORMAT: ext4, squashfs, fat or all; TIME: 30s, 10m, 1h, ...
# Failing images go to fuzz-findings/, hypothesis's memory to .hypothesis/fuzz/.

PYTHON ?= .venv/bin/python
FORMAT ?= all
TIME ?= 10m

.PHONY: fuzz
fuzz:
	$(PYTHON) scripts/fuzz.py --format $(FORMAT) --time $(TIME)
