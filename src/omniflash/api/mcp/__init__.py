"""The MCP dialect: tools for coding agents (``server``, which also renders the error
tree as tool errors) behind a Streamable HTTP endpoint at ``/mcp`` (``endpoint``: the
Bearer key first, then the SDK, loaded on the first MCP request)."""
