"""The per-subject engine and the ways to run it: in process, worker processes, Spark."""
