"""Parts of MLRL (Wu et al., multi-level representation learning with semantic alignment)."""
