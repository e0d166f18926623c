"""Agents' interface: the MCP server exposing the services as tools, over HTTP and stdio."""
