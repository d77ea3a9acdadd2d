"""Model bundles: their format and verified loading, packaging a fitted model, the demo model."""
