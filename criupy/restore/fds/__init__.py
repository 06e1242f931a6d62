"""Restoring the kinds of fds beyond regular files and pipes, one module per kind."""
