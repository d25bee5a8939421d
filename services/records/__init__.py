"""The records service (docs/architecture.md, Services and ownership)."""
