"""Import-only stand-in (see README.md in this folder)."""
