"""Small routers, one per API area."""
