"""modeling/heads."""
