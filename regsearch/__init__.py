"""regsearch."""
