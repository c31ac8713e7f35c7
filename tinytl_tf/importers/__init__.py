"""Importers: weights trained elsewhere -> this package's files (`ofa`: the once-for-all super-net checkpoint)."""
