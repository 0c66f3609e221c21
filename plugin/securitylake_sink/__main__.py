"""``python -m securitylake_sink`` runs the command line."""

from securitylake_sink.cli import main

raise SystemExit(main())
