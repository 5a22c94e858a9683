"""Importers of other gateways' configuration files (`vmcp import ...`): each turns a foreign document into a
vmcp-opt config plus a list of what did not carry over, so a user moving across sees every gap by its path."""
