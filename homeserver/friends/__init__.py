"""Friends (Whispr's social layer): requests, acceptance, the friend list."""
