"""Accounts: registration, passwords, tokens, login steps, UIA, email verification, TOTP, mail, profiles."""
