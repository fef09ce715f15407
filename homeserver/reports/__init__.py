"""Reports of events, rooms and users by users to the server admins."""
