"""Videostreams catalogue: records of captured videos with time spans, and overlap queries."""
