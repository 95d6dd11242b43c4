"""The SQL sandbox's limits (``storage.query``), apart so that the CLI states them without
loading DuckDB."""

DEFAULT_TIMEOUT = 300.0  # seconds a query may run
MEMORY_LIMIT = "4GB"
THREADS = 2
