"""The durable log: one narrow interface, an embedded and a Kafka implementation."""
