"""The network surfaces over `CodeMode`: the HTTP service (`app`) and codemode as an MCP server.

Both face untrusted callers: bind address, Host, Origin, bearer token and body
size are checked before a request reaches `CodeMode`.
"""
