"""Training tasks as pure data (no MPI)."""
