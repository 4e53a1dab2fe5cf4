"""Operations: retention (janitor), pins, fsck and metrics.  Nothing here imports aiohttp."""
