"""The lakehouse: Iceberg catalog, K2's tables and the exactly-once lake sink."""
