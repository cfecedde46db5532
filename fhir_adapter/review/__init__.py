"""Review of pre-populated values: candidates, decisions, the review app (docs/review.md)."""
