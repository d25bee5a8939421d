"""The records service (DESIGN.md, Services)."""
