"""HTML templates of the reviewer report (package data)."""
