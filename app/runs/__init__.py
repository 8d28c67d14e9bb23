"""Training runs: submission and queries (the API), the worker's lifecycle writes, the live stream."""
