"""Data preparation: writers of datasets in their release layouts (the synthetic generator, the
DAVIS layout converter). Not imported by `import rvos_d2`; tools and tests import them."""
