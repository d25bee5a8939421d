"""The identity service (docs/architecture.md, Services and ownership)."""
