"""Client-Server API handlers (aiohttp): parse, call the domain, serialise."""
