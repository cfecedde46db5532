"""Who is in the trial: the enrolled subjects (ResearchSubjects of the study, or a site roster CSV reconciled
into them), their subject IDs, and Day 1 (the infusion)."""
