"""The ledger path on the API's side: the Redis gateway (cache, ledger append, spool fail-over),
the durable spool, the ledger's health, reads of stored predictions and the audit."""
