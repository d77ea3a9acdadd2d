"""Ledger worker: moves served-prediction records from the Redis stream into PostgreSQL."""
