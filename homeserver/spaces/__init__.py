"""Spaces: the hierarchy of a space's rooms (m.space.child) and room summaries."""
