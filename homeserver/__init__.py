"""Whispr homeserver: config, app assembly, CLI, and the domain."""
