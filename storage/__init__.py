"""Arrow schemas, atomic Parquet writes, and DuckDB views over the results directory."""
