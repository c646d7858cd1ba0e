"""logical layer."""
