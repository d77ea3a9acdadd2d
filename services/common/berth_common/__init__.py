"""Code both Berth services install: settings, logging, the ledger record contract, tables."""
