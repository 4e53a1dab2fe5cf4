"""Stream recording: one supervised segmenter ffmpeg per stream, and clips cut by wall-clock time."""
