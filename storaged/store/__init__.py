"""The tree: everything the daemon knows, as directories and JSON files.

Nothing in this package imports aiohttp.
"""
