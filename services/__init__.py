"""MedLedger: patient-controlled medical records with a verifiable event ledger."""
