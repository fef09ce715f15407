"""Sync: /sync and its notifier, filters, typing."""
