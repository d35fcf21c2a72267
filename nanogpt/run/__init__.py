"""A run on disk: its directory and record (rundir.py), metrics and summary files, results read back, command-line overrides."""
