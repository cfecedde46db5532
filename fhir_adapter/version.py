"""The adapter's version, named in every resource it writes (Device, Provenance, meta.source) and every export."""

__version__ = "0.1.0"
