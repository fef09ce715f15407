"""VoIP: TURN credentials for calls."""
