"""Generated from protos/medledger/v1 by `make protos`. Do not edit."""
