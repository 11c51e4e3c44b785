"""The engine's control API: a versioned JSON API on a Unix socket in the run dir, and the client the app uses."""
