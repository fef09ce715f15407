"""Rooms: events in rooms, membership, creation, room data, chats, directories, history visibility, timeline."""
