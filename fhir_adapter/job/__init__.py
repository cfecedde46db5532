"""One run of the adapter: open the source and sink, run every subject, write the outputs atomically under
OUT, and say how it went (run log, quarantine, exit code)."""
