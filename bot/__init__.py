"""SOPHIE's runtime: settings, CLI, app assembly and the adapters behind the roles' ports."""
