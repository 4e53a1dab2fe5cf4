"""Files: uploads stored by content (SHA-256), listed, downloaded and deleted."""
