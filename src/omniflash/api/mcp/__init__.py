"""The MCP dialect: tools for coding agents (``server``) behind a Streamable HTTP
endpoint at ``/mcp`` (``endpoint``)."""
