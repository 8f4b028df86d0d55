"""Long randomized, verified stress test: ``python -m multiwrite.stress --duration 30m`` under mpirun or
torchrun (``--help``: cli.py's docstring says what it runs, checks and reports).

Modules, imported in one direction only (cli -> runner -> the rest): cli.py (command line, exit
status), runner.py (one rank's run loop), workloads.py (the operations, prologue and random mix),
data.py (inputs from the seeds and the references), faults.py (--delay/--kill/--hang-rank, failure
reports), memory.py (RSS readings), progress.py (the bar), report.py (summary, JSON). Units and
percentiles come from multiwrite._util.
"""
