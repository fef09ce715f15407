"""Server-side search (POST /search): the room_events category over the full-text index."""
