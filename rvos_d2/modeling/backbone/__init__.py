"""modeling/backbone."""
