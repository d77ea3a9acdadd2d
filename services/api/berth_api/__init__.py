"""Berth API: serves scikit-learn bundles over REST and records every served row in the ledger."""

__version__ = "0.1.0"
