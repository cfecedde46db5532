"""Results: every derivation of a subject gathered, and the study-level ``results/study.json``."""
