"""The consent service (DESIGN.md, Services)."""
