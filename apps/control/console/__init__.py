"""The operator console at /console/: one live page over the ledger, the broker, the workers and the
dead letters, with the actions next to what they act on (docs/control.md, "Operator console")."""
