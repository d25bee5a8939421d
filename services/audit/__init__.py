"""Audit tooling: independent verification of the ledger from its entries,
its signed checkpoints and the public verifier key alone."""
