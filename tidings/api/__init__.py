"""The HTTP surface: server API, client API, operator endpoints."""
