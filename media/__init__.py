"""Media repository: upload, download, thumbnails, remote media."""
