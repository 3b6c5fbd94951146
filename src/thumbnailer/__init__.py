"""thumbnailer: asynchronous image thumbnails."""
