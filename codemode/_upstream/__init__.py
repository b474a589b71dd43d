"""The MCP servers behind codemode: their config, the client hub, and how their results map to values.

Everything a server sends is untrusted; `hub` turns it into `codemode.Tool`s,
values and typed errors, so no layer above sees an MCP SDK type.
"""
