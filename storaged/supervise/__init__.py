"""Running and supervising processes: ffmpeg/ffprobe runs, process identity, the stop sequence, restart backoff."""
