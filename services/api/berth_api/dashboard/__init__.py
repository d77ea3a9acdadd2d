"""The dashboard at /dashboard: a page of charts (uPlot, shipped in `static/`) that reads one JSON
document, `GET /dashboard/data`, computed with SQL over the ledger (`figures`)."""
