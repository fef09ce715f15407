"""Relations between events: the index's readers, bundled aggregations, threads."""
