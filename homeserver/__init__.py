"""Whispr homeserver: the shell (config, app assembly, CLI) and the domain in sub-packages."""
