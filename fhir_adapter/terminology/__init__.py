"""Code systems, identifier systems and UCUM units used across the adapter."""
