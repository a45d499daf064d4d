"""Measuring communication and numerics: the cost model, the ledger, error measures, units."""
