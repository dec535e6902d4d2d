"""Scoring: predictors of runs and bundles, a fold's report as ``fit`` writes it, ``trainer evaluate``, and the
metrics, tables and plots."""
