"""Orders: what agents and people ask to trade, from intake through maker-checker approval."""
