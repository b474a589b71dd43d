"""Running code: one run of model-written Python, in a fresh wasm instance or the restricted backend.

`runner.Sandbox` is the entry; `dispatch` carries out the guest's tool calls on
the host; `wasm`, `pooling`, `hostcall` and `epoch` hold the wasmtime backend;
`guest` builds and caches the guest component; `restricted` is the weaker
in-process backend. Nothing here knows about MCP.
"""
