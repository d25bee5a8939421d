"""The identity service (DESIGN.md, Services)."""
