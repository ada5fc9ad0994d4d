"""Operations: structured logging (metrics, health and resilience join later)."""
