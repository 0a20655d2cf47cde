"""The `dpiqa` jobs: thin wiring of engine and model parts behind one CLI."""
