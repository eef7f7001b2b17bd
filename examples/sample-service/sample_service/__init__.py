"""A tiny user-authentication web service: the repository `sophie implement` is tried on."""
