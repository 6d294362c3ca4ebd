"""Experiment grids, the results store and the statistics every comparison is reported with."""
