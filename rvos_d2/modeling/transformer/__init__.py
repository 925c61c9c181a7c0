"""modeling/transformer."""
