"""Runtime shared by every MedLedger service: settings, logs, errors, Kafka,
PostgreSQL, the gRPC server bootstrap and process lifecycle. Written once, here."""
