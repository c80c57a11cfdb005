"""Using finished runs: predict, export, select (what to label next) and serve (an HTTP API)."""
