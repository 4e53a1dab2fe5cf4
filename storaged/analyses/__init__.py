"""Analyses: named ffmpeg/ffprobe work on a stored file, run as jobs, with downloadable outputs."""
