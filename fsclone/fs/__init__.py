"""The only package that calls the OS: fd-relative, symlink-safe, atime-preserving."""
