"""Identity and access: principals, roles, permissions, tokens and API keys."""
