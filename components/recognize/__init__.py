"""The recognize component."""
