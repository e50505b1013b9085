"""The `hitl-grpc` command: serve, migrate, health, users, watch."""
