"""Server administration: the Synapse-compatible admin API's domain (accounts, rooms, registration tokens,
shared-secret registration), for users with the admin flag and for the command line."""
