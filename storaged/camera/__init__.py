"""Camera storage: motion capture, images -> mp4/zip, disk usage and cleanup."""
