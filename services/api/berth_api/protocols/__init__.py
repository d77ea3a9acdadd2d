"""Standard inference protocols, translated to and from Berth's rows and predictions.

Each module is plain Python: it turns a protocol's request into the instances that
`PredictionService` takes, and its `Answer` into the protocol's answer, so every door goes
through the same validation, cache and ledger.
"""
