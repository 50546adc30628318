"""The build_gallery component."""
