"""The commands people run: the command line, probe, scan and watch."""
