"""`python -m hitl_grpc.cli` runs the `hitl-grpc` command."""

from hitl_grpc.cli.main import main

raise SystemExit(main())
