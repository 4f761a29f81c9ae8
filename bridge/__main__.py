"""Entry point for ``python -m bridge``."""

from bridge.tools.cli import main

raise SystemExit(main())
