"""Code mode: one tool that runs a caller's Starlark script, whose calls of other tools go through the router."""
