"""storaged: the storage daemon of a video capture box."""

__version__ = "0.1.0"
