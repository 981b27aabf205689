"""The revisions, one file each, oldest first; frozen once released."""
