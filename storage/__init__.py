"""Storage: one async interface (`Database`), two engines (SQLite, PostgreSQL), versioned migrations,
and per-area stores (`Store`) that hold all the SQL."""

from storage.database import Database, open_database
from storage.store import Store

__all__ = ["Database", "Store", "open_database"]
