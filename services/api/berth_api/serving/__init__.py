"""The serving path: rows validated, answered from the cache or the model (continuously batched,
compiled where exact), and handed to the ledger before the answer goes out."""
