"""Slack surfaces: listeners that call the roles, and pure Block Kit builders."""
