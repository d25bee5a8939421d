"""The consent service (docs/architecture.md, Services and ownership)."""
