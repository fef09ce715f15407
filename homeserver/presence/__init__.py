"""Presence: online, unavailable, offline."""
