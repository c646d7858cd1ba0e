"""physical layer."""
