"""modeling/meta_arch."""
